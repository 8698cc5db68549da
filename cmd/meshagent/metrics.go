package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// daemonMetrics are the daemon's Prometheus metrics, served on the local
// API at /metrics (and on metrics_listen when set), next to libp2p's own.
type daemonMetrics struct {
	reg       *prometheus.Registry
	decisions *prometheus.CounterVec
	// tracer, when otlp_endpoint is set, exports a span per call
	// (tracing.go); nil otherwise.
	tracer *callTracer
	// console, when --console is set, shows each audit record in its
	// live tail (console_tail.go); nil otherwise.
	console *consoleServer
}

func newDaemonMetrics() *daemonMetrics {
	reg := prometheus.NewRegistry()
	m := &daemonMetrics{reg: reg, decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshagent_decisions_total",
		Help: "Audited calls, messages and liveness changes, by direction, kind, decision and reason.",
	}, []string{"direction", "kind", "decision", "reason"})}
	reg.MustRegister(m.decisions, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watch registers the gauges that read n's state, and counts its audit
// records.
func (m *daemonMetrics) watch(n *node.Node) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_credential_seconds_left",
			Help: "Seconds until this agent's credential expires (renewed automatically at 2/3 of its lifetime)."},
			func() float64 { return time.Until(n.Credential().Expires).Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_credential_renewal_overdue",
			Help: "1 while the credential is past half-life and no issuer has renewed it, else 0."},
			func() float64 {
				if n.Stats().Credential.Warning != "" {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshagent_throttled_requests_total",
			Help: "Requests refused unchecked because their sender had spent its budget of rejected requests."},
			func() float64 { return float64(n.Stats().Throttled) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_replay_nonces",
			Help: "Nonces the replay guard remembers: the envelopes accepted over the last replay window (about 10 bytes each, at most 64 MiB)."},
			func() float64 { return float64(n.Stats().ReplayNonces) }),
	)
	for _, st := range []discovery.State{discovery.Alive, discovery.Suspect, discovery.Dead} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_registry_agents",
			Help: "Agents in this node's registry, by state.", ConstLabels: prometheus.Labels{"state": st.String()}},
			func() float64 {
				c := 0
				for _, e := range n.Peers() {
					if e.State == st {
						c++
					}
				}
				return float64(c)
			}))
	}
	n.SetAuditHook(func(r node.AuditRecord) {
		m.decisions.WithLabelValues(label(knownDirections, string(r.Direction)), label(knownKinds, string(r.Kind)),
			label(knownDecisions, string(r.Decision)), label(knownReasons, r.Reason)).Inc()
		m.tracer.audited(r)
		m.console.audited(r)
	})
}

// watchStreams registers the gauges of what the local API's streams hold.
func (m *daemonMetrics) watchStreams(h *hub, subs *subscribers) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_pending_calls",
			Help: "Inbound calls held for local handlers: queued for their /v1/handle stream or waiting for /v1/reply."},
			func() float64 { c, _ := h.held(); return float64(c) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_pending_call_bytes",
			Help: "Request bytes of the calls in meshagent_pending_calls."},
			func() float64 { _, b := h.held(); return float64(b) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_subscriber_queued_bytes",
			Help: "Message bytes waiting for /v1/subscribe streams to take them."},
			func() float64 { return float64(subs.bytes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshagent_subscribers_dropped_total",
			Help: "/v1/subscribe streams ended because they fell behind."},
			func() float64 { return float64(subs.dropped.Load()) }),
	)
}

// The label values decisions are counted under. A value from elsewhere (an
// error code a peer made up, say) is counted as "other": no peer can add
// series. TestBoundedLabelsKnowEveryCode checks that every code the trust,
// protocol and node packages define is here.
var (
	knownDirections = labelSet("in", "out")
	knownKinds      = labelSet("request", "reply", "error", "message", "admission", "liveness",
		"revocation", "renewal", "beat", "record", "leave")
	knownDecisions = labelSet("accept", "reject", "alive", "suspect", "dead", "removed")
	knownReasons   = labelSet("",
		// liveness events (discovery.Event.Reason)
		"joined", "announce", "heartbeat", "leave", "timeout", "missed heartbeats",
		// node: an unknown remote error code, suppressed audit lines
		"unknown_code", "audit_suppressed",
		// trust codes
		string(trust.CodeMalformed), string(trust.CodeTooLarge), string(trust.CodeTooDeep),
		string(trust.CodeBadSignature), string(trust.CodeUntrustedRoot), string(trust.CodeExpired),
		string(trust.CodeNotYetValid), string(trust.CodeEscalation), string(trust.CodeWildcard),
		string(trust.CodeNotHolder), string(trust.CodeScopeNotGranted), string(trust.CodeRevoked),
		string(trust.CodeLifetime), string(trust.CodeFull), string(trust.CodeVersion), string(trust.CodeWeakKey),
		// protocol codes
		string(protocol.CodeStale), string(protocol.CodeReplay), string(protocol.CodeReplayFull),
		string(protocol.CodeWrongRecipient), string(protocol.CodeWrongKind), string(protocol.CodeImpersonation),
		string(protocol.CodeNoToken), string(protocol.CodeUnlisted), string(protocol.CodeDead),
		string(protocol.CodeNoHandler), string(protocol.CodeHandlerError), string(protocol.CodeUnavailable),
		string(protocol.CodeFlood), string(protocol.CodeTopicNotGranted), string(protocol.CodeBusy),
		string(protocol.CodeProgressBound))
)

// otherLabel stands for every label value not known in advance.
const otherLabel = "other"

func labelSet(vs ...string) map[string]bool {
	s := make(map[string]bool, len(vs))
	for _, v := range vs {
		s[v] = true
	}
	return s
}

func label(known map[string]bool, v string) string {
	if known[v] {
		return v
	}
	return otherLabel
}

func (m *daemonMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
