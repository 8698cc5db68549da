package main

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
)

// daemonMetrics are the daemon's Prometheus metrics, served on the local
// API at /metrics (and on metrics_listen when set), next to libp2p's own.
type daemonMetrics struct {
	reg       *prometheus.Registry
	decisions *prometheus.CounterVec
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
				if n.CredentialStatus().Warning != "" {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshagent_throttled_requests_total",
			Help: "Requests refused unchecked because their sender had spent its budget of rejected requests."},
			func() float64 { return float64(n.Throttled()) }),
	)
	for _, st := range []discovery.State{discovery.Alive, discovery.Suspect, discovery.Dead} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshagent_registry_agents",
			Help: "Agents in this node's registry, by state.", ConstLabels: prometheus.Labels{"state": st.String()}},
			func() float64 {
				c := 0
				for _, e := range n.Peers() {
					if e.State == st.String() {
						c++
					}
				}
				return float64(c)
			}))
	}
	n.SetAuditHook(func(r node.AuditRecord) {
		m.decisions.WithLabelValues(r.Direction, r.Kind, r.Decision, r.Reason).Inc()
	})
}

func (m *daemonMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
