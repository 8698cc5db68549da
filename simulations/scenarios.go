//go:build meshsim

package simulations

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// RegistryResult holds the figures of one registry scenario.
type RegistryResult struct {
	N                 int
	Heartbeat         time.Duration
	Connect           time.Duration // wiring the topology (ring plus chords, 16 dials at a time), admission included
	Converge          time.Duration // after the last connection, until every node sees every other alive
	BytesPerNodePerHB float64       // pubsub bytes received per node per heartbeat, steady state
	FalseDead         int           // dead verdicts about live agents under the injected loss
	FalseDeadPairs    []string      // each as "observer declared subject dead", sorted
	Loss              float64
	Killed            int
	DetectHB          []float64 // per (observer, victim): crash to dead verdict, in heartbeats
	DetectSpread      time.Duration
	Revocation        time.Duration // until the last live node applied a revocation
}

// KbitPerNodeAt30s projects the steady liveness traffic to the default
// 30 s heartbeat: it scales with the number of agents, not with time.
func (r RegistryResult) KbitPerNodeAt30s() float64 { return r.BytesPerNodePerHB * 8 / 30 / 1000 }

// Percentile returns the p-quantile of d (0 <= p <= 1): the value of rank
// (len(d)-1) × p, rounded down, in d sorted; zero for none. d is left as
// it is.
func Percentile[T cmp.Ordered](d []T, p float64) T {
	if len(d) == 0 {
		var zero T
		return zero
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// RegistryScenario cold-starts n nodes over TCP+TLS on loopback (ring plus
// one random chord each, from seed, dialled 16 at a time), then measures convergence, steady
// liveness traffic, false verdicts under the given loss (for ten
// heartbeats), detection of a tenth of the nodes crashing at once, and the
// propagation of a revocation. The heartbeat should grow with n on a small
// machine, since every node verifies every heartbeat (n × 10 ms works on 2
// cores up to n = 100).
func RegistryScenario(ctx context.Context, n int, hb time.Duration, loss float64, seed uint64) (RegistryResult, error) {
	res := RegistryResult{N: n, Heartbeat: hb, Loss: loss}
	dead := 3 * hb
	var mu sync.Mutex
	revoked := map[string]time.Time{}
	m, err := NewMesh(ctx, AgentNames(n), Options{HeartbeatInterval: hb, DeadAfter: dead,
		Configure: func(name string, c *node.Config) {
			c.OnRevocation = func([]byte) {
				mu.Lock()
				revoked[name] = time.Now()
				mu.Unlock()
			}
		}})
	if err != nil {
		return res, err
	}
	defer m.Close()
	start := time.Now()
	if err := m.WireSparse(ctx, 1, seed, 16); err != nil {
		return res, err
	}
	res.Connect = time.Since(start)
	start = time.Now()
	if err := WaitFor(20*dead+30*time.Second, func() error { return m.Converged("alive") }); err != nil {
		return res, fmt.Errorf("convergence: %w", err)
	}
	res.Converge = time.Since(start)

	var in0 int64
	for _, a := range m.Agents {
		in0 += a.Node.Stats().GossipBytesIn()
	}
	window := 5 * hb
	time.Sleep(window) // a steady window of fixed length: what is measured
	in := -in0
	for _, a := range m.Agents {
		in += a.Node.Stats().GossipBytesIn()
	}
	res.BytesPerNodePerHB = float64(in) / float64(n) / (window.Seconds() / hb.Seconds())

	var deadMu sync.Mutex
	deaths := map[string]map[string]time.Time{} // victim -> observer -> when
	for _, name := range m.Names() {
		m.Agents[name].Node.OnEvent(func(e discovery.Event) {
			if e.To == discovery.Dead {
				deadMu.Lock()
				if deaths[e.Name] == nil {
					deaths[e.Name] = map[string]time.Time{}
				}
				deaths[e.Name][name] = time.Now()
				deadMu.Unlock()
			}
		})
	}
	m.SetLoss(loss)
	time.Sleep(10 * hb)
	deadMu.Lock()
	for subject, obs := range deaths {
		res.FalseDead += len(obs)
		for o := range obs {
			res.FalseDeadPairs = append(res.FalseDeadPairs, o+" declared "+subject+" dead")
		}
	}
	deaths = map[string]map[string]time.Time{}
	deadMu.Unlock()

	victims := m.Names()[:max(1, n/10)]
	res.Killed = len(victims)
	crashAt := time.Now()
	for _, v := range victims {
		m.Crash(v)
	}
	if err := WaitFor(10*dead+10*time.Second, func() error {
		deadMu.Lock()
		defer deadMu.Unlock()
		for _, v := range victims {
			if len(deaths[v]) < n-len(victims) {
				return fmt.Errorf("%s seen dead by %d of %d", v, len(deaths[v]), n-len(victims))
			}
		}
		return nil
	}); err != nil {
		return res, fmt.Errorf("detection: %w", err)
	}
	m.SetLoss(0)
	deadMu.Lock()
	for v, obs := range deaths {
		if !slices.Contains(victims, v) {
			res.FalseDead += len(obs) // a live agent declared dead during the crash
			for o := range obs {
				res.FalseDeadPairs = append(res.FalseDeadPairs, o+" declared "+v+" dead (during the crash)")
			}
		}
	}
	for _, v := range victims {
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for obs, at := range deaths[v] {
			if slices.Contains(victims, obs) {
				continue
			}
			d := at.Sub(crashAt)
			res.DetectHB = append(res.DetectHB, d.Seconds()/hb.Seconds())
			lo, hi = min(lo, d), max(hi, d)
		}
		res.DetectSpread = max(res.DetectSpread, hi-lo)
	}
	deadMu.Unlock()

	live := m.Names()[len(victims):]
	tok, err := m.Grant(live[0], []string{"read:logs"}, nil, time.Hour)
	if err != nil {
		return res, err
	}
	rev, err := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
	if err != nil {
		return res, err
	}
	revStart := time.Now()
	if err := m.Agents[live[1]].Node.Revoke(ctx, rev.Bytes()); err != nil {
		return res, err
	}
	if err := WaitFor(30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, name := range live {
			if revoked[name].Before(revStart) {
				return fmt.Errorf("%s has not applied the revocation", name)
			}
		}
		return nil
	}); err != nil {
		return res, err
	}
	mu.Lock()
	for _, name := range live {
		res.Revocation = max(res.Revocation, revoked[name].Sub(revStart))
	}
	mu.Unlock()
	slices.Sort(res.FalseDeadPairs)
	return res, nil
}
