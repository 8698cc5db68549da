package main

import (
	"net/http"
	"sync"
	"sync/atomic"
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
	// calls is meshagent_call_duration_seconds{side,action,decision}; its
	// action label is bounded by actions.
	calls   *prometheus.HistogramVec
	actions actionLabels
	// hub is the local API's handlers, once watchStreams has it: the
	// actions local processes serve.
	hub atomic.Pointer[hub]
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
	}, []string{"direction", "kind", "decision", "reason"}),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshagent_call_duration_seconds",
			Help:    "Calls from decision to reply, by side (caller: this agent's calls; handler: calls it served or refused), action (\"other\" for one this agent neither handles nor holds a token for) and decision (accept, or the reason code of the refusal).",
			Buckets: callBuckets,
		}, []string{"side", "action", "decision"})}
	b := currentBuild()
	reg.MustRegister(m.decisions, m.calls, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_build_info",
			Help:        "Always 1; the labels say which build of meshagent this is (meshagent version).",
			ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion}},
			func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_replay_nonces_capacity",
			Help: "The most nonces the replay guard holds (protocol.DefaultReplayEntries, the node's): past it, new requests are answered busy."},
			func() float64 { return protocol.DefaultReplayEntries }))
	return m
}

// callBuckets are the bounds of meshagent_call_duration_seconds: from a
// millisecond to the longest call timeout (1 h).
var callBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

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
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_ready",
			Help: "1 while /readyz answers ready (another agent alive in the registry, a credential valid now), else 0."},
			func() float64 {
				if notReady(n, time.Now()) != "" {
					return 0
				}
				return 1
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
		m.observeCall(n, r)
		m.tracer.audited(r)
		m.console.audited(r)
	})
}

// observeCall adds a call's audit record to meshagent_call_duration_seconds.
// Request records are written with no lock of the node's or the hub's held
// (node/rpc.go: roundTrip, handleRPC), so the action check may take them.
func (m *daemonMetrics) observeCall(n *node.Node, r node.AuditRecord) {
	if r.Kind != "request" {
		return
	}
	side := "handler"
	if r.Direction == "out" {
		side = "caller"
	}
	decision := string(r.Decision)
	if r.Decision != "accept" {
		decision = label(knownReasons, r.Reason)
		if decision == "" {
			decision = otherLabel
		}
	}
	action := m.actions.label(r.Action, func(a string) bool { return m.knownAction(n, a) })
	m.calls.WithLabelValues(side, action, decision).Observe(r.LatencyMS / 1000)
}

// knownAction reports whether action is one this daemon serves (itself,
// or through a local process) or holds a token for: the only actions
// counted under their own name.
func (m *daemonMetrics) knownAction(n *node.Node, action string) bool {
	if action == pingAction {
		return true
	}
	if h := m.hub.Load(); h != nil && h.serves(action) {
		return true
	}
	for _, t := range n.Tokens() {
		for _, s := range t.Leaf().Scopes {
			if s == action {
				return true
			}
		}
	}
	return false
}

// serves reports whether a local process handles action now.
func (h *hub) serves(action string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.actions[action]
	return ok
}

// maxActionLabels bounds the action label values of
// meshagent_call_duration_seconds: past it every new action is "other".
// Known actions already bound them; this bounds what local processes that
// register handler after handler could add.
const maxActionLabels = 128

// actionLabels are the action label values given so far. A value once
// given stays (its series do too).
type actionLabels struct {
	mu   sync.Mutex
	seen map[string]bool
}

// label is action's label value: itself if seen before, or if known says
// so and the bound leaves room; else "other". known runs without the lock.
func (a *actionLabels) label(action string, known func(string) bool) string {
	a.mu.Lock()
	seen, full := a.seen[action], len(a.seen) >= maxActionLabels
	a.mu.Unlock()
	switch {
	case seen:
		return action
	case full || action == "" || action == otherLabel || !known(action):
		return otherLabel
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	if !a.seen[action] && len(a.seen) >= maxActionLabels {
		return otherLabel
	}
	a.seen[action] = true
	return action
}

// watchStreams registers the gauges of what the local API's streams hold.
func (m *daemonMetrics) watchStreams(h *hub, subs *subscribers) {
	m.hub.Store(h)
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
