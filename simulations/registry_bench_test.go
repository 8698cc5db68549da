package simulations_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

func pct(d []float64, p float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkRegistry runs, for each N, a cold start of N real nodes over
// TCP+TLS on loopback (ring plus one random chord per node) and measures:
// registry convergence; liveness traffic per node in steady state; false
// dead verdicts under 10 % message loss; detection of a tenth of the nodes
// crashing at once; and how long a revocation takes to reach every node.
// The heartbeat is scaled with N (N × 10 ms) so that the 2-core machine
// keeps up with every node verifying every heartbeat; times are reported in
// heartbeat intervals as well. Run with -benchtime 1x.
func BenchmarkRegistry(b *testing.B) {
	for _, n := range []int{10, 50, 100, 200} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				registryScenario(b, n)
			}
		})
	}
}

func registryScenario(b *testing.B, n int) {
	hb := time.Duration(n) * 10 * time.Millisecond
	dead := 3 * hb
	ctx := context.Background()
	var mu sync.Mutex
	revoked := map[string]time.Time{}
	m, err := simulations.NewMesh(ctx, names(n), simulations.Options{HeartbeatInterval: hb, DeadAfter: dead,
		Configure: func(name string, c *node.Config) {
			c.OnRevocation = func([]byte) {
				mu.Lock()
				revoked[name] = time.Now()
				mu.Unlock()
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	if err := m.ConnectSparse(ctx, 1, 7); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(time.Since(start).Milliseconds()), "connect_ms")
	start = time.Now() // convergence counts from the last connection
	if err := simulations.WaitFor(20*dead+30*time.Second, func() error { return m.Converged("alive") }); err != nil {
		b.Fatal(err)
	}
	converge := time.Since(start)
	b.ReportMetric(float64(converge.Milliseconds()), "converge_ms")
	b.ReportMetric(converge.Seconds()/hb.Seconds(), "converge_hb")

	// Steady-state liveness traffic, received per node per heartbeat.
	var in0 int64
	for _, a := range m.Agents {
		in0 += a.Node.PubsubBytesIn()
	}
	window := 5 * hb
	time.Sleep(window)
	in := -in0
	for _, a := range m.Agents {
		in += a.Node.PubsubBytesIn()
	}
	perNodePerHB := float64(in) / float64(n) / (window.Seconds() / hb.Seconds())
	b.ReportMetric(perNodePerHB, "bytes_in_per_node_per_hb")
	b.ReportMetric(perNodePerHB*8/30/1000, "kbit_s_per_node_at_30s_hb")

	// False verdicts under 10 % loss.
	var deadMu sync.Mutex
	deaths := map[string]map[string]time.Time{} // victim -> observer -> when
	for _, name := range m.Names() {
		m.Agents[name].Node.OnEvent(func(e discovery.Event) {
			if e.To == discovery.Dead {
				deadMu.Lock()
				v := e.Name
				if deaths[v] == nil {
					deaths[v] = map[string]time.Time{}
				}
				deaths[v][name] = time.Now()
				deadMu.Unlock()
			}
		})
	}
	m.SetLoss(0.10)
	time.Sleep(10 * hb)
	m.SetLoss(0)
	deadMu.Lock()
	falseDead := 0
	for _, obs := range deaths {
		falseDead += len(obs)
	}
	deaths = map[string]map[string]time.Time{}
	deadMu.Unlock()
	b.ReportMetric(float64(falseDead), "false_dead_10pct_loss")

	// A tenth of the nodes crash at once.
	victims := m.Names()[:max(1, n/10)]
	crashAt := time.Now()
	for _, v := range victims {
		m.Crash(v)
	}
	if err := simulations.WaitFor(10*dead+10*time.Second, func() error {
		deadMu.Lock()
		defer deadMu.Unlock()
		for _, v := range victims {
			if len(deaths[v]) < n-len(victims) {
				return fmt.Errorf("%s seen dead by %d of %d", v, len(deaths[v]), n-len(victims))
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	var detect []float64
	var spread time.Duration
	deadMu.Lock()
	for _, v := range victims {
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for _, at := range deaths[v] {
			d := at.Sub(crashAt)
			detect = append(detect, d.Seconds()/hb.Seconds())
			lo, hi = min(lo, d), max(hi, d)
		}
		spread = max(spread, hi-lo)
	}
	deadMu.Unlock()
	b.ReportMetric(pct(detect, 0.5), "detect_p50_hb")
	b.ReportMetric(pct(detect, 0.99), "detect_p99_hb")
	b.ReportMetric(float64(spread.Milliseconds()), "detect_spread_ms")

	// A revocation published by one node reaches every live node.
	live := m.Names()[len(victims):]
	tok, _ := m.Grant(live[0], []string{"read:logs"}, nil, time.Hour)
	rev, _ := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
	revStart := time.Now()
	if err := m.Agents[live[1]].Node.Revoke(ctx, rev.Bytes()); err != nil {
		b.Fatal(err)
	}
	if err := simulations.WaitFor(30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, name := range live {
			if revoked[name].Before(revStart) {
				a := m.Agents[name].Node
				return fmt.Errorf("%s has not applied the revocation (revocations held %d, peers %d, state seen by %s: %s)",
					name, a.Verifier().Revocations(), len(a.Host().Network().Peers()), live[1], m.StateOf(live[1], name))
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	var last time.Duration
	mu.Lock()
	for _, name := range live {
		last = max(last, revoked[name].Sub(revStart))
	}
	mu.Unlock()
	b.ReportMetric(float64(last.Microseconds())/1000, "revocation_all_ms")
}
