//go:build meshsim

package simulations_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/x/simlibp2p"
	"github.com/marcopolo/simnet"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// virtualMesh runs f on n nodes connected over simnet (QUIC + TLS 1.3 on
// a simulated network with 25 ms one-way latency and 20 Mbit/s links),
// inside testing/synctest: time is virtual, so production intervals (30 s
// heartbeats, dead after 90 s) cost only the CPU of the work done. f gets
// the options that add more nodes to the same network; hook, when set,
// adjusts every node's config.
func virtualMesh(t *testing.T, n int, hook func(name string, c *node.Config), f func(m *simulations.Mesh, opts simulations.Options)) {
	if raceEnabled {
		t.Skip("virtual time under -race: ThreadSanitizer crashes in synctest bubbles (golang/go#78156); make test runs this without -race")
	}
	synctest.Test(t, func(t *testing.T) {
		nw := &simnet.Simnet{LatencyFunc: simnet.StaticLatency(25 * time.Millisecond)}
		link := simnet.NodeBiDiLinkSettings{
			Downlink: simnet.LinkSettings{BitsPerSecond: 20 * simlibp2p.OneMbps},
			Uplink:   simnet.LinkSettings{BitsPerSecond: 20 * simlibp2p.OneMbps},
		}
		nw.Start()
		defer nw.Close()
		var mu sync.Mutex
		next := 0
		opts := simulations.Options{
			HeartbeatInterval: 30 * time.Second, DeadAfter: 90 * time.Second,
			HostOptions: func(string) []libp2p.Option { return []libp2p.Option{simlibp2p.QUICSimnet(nw, link)} },
			Configure: func(name string, c *node.Config) {
				mu.Lock()
				next++
				ip := simnet.IntToPublicIPv4(next)
				mu.Unlock()
				c.ListenAddrs = []string{fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", ip)}
				c.AdmissionTimeout = 10 * time.Second
				if hook != nil {
					hook(name, c)
				}
			}}
		m, err := simulations.NewMesh(context.Background(), simulations.AgentNames(n), opts)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		f(m, opts)
	})
}

// observed records, per subject, when each observer saw something happen
// to it (an agent joined, left, a revocation applied), in virtual time.
type observed struct {
	mu sync.Mutex
	at map[string]map[string]time.Time // subject -> observer -> when
}

func (o *observed) see(subject, observer string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.at == nil {
		o.at = map[string]map[string]time.Time{}
	}
	if o.at[subject] == nil {
		o.at[subject] = map[string]time.Time{}
	}
	if _, ok := o.at[subject][observer]; !ok {
		o.at[subject][observer] = time.Now()
	}
}

// when returns when observer saw subject, if it did.
func (o *observed) when(subject, observer string) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.at[subject][observer]
	return at, ok
}

// all waits until every observer in names saw subject, and returns how
// long after start the last one did.
func (o *observed) all(subject string, names []string, start time.Time, timeout time.Duration) (time.Duration, error) {
	var last time.Duration
	err := simulations.WaitForEvery(timeout, 100*time.Millisecond, func() error {
		o.mu.Lock()
		defer o.mu.Unlock()
		last = 0
		for _, nm := range names {
			at, ok := o.at[subject][nm]
			if !ok {
				return fmt.Errorf("%s has not seen %s", nm, subject)
			}
			last = max(last, at.Sub(start))
		}
		return nil
	})
	return last, err
}

// latest returns, slowest first, the k observers in names that saw subject
// last, with how long after start each did.
func (o *observed) latest(subject string, names []string, start time.Time, k int) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	type seen struct {
		name string
		d    time.Duration
	}
	var all []seen
	for _, nm := range names {
		if at, ok := o.at[subject][nm]; ok {
			all = append(all, seen{nm, at.Sub(start)})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].d > all[j].d })
	var out []string
	for _, x := range all[:min(k, len(all))] {
		out = append(out, fmt.Sprintf("%s after %s", x.name, x.d.Round(time.Millisecond)))
	}
	return out
}

func without(names []string, drop ...string) []string {
	var out []string
	for _, n := range names {
		if !slices.Contains(drop, n) {
			out = append(out, n)
		}
	}
	return out
}

// peakRSSMiB returns the process's peak resident set size (VmHWM), or 0
// where /proc is not available.
func peakRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// scenarioPhases runs the phases of TestVirtualTimeScenario in order,
// inside its one synctest bubble, and keeps what each found wrong. T.Run
// cannot be called inside a bubble (testing/synctest), so report turns the
// phases into subtests once the bubble has ended. A phase that fails stops
// there and the phases after it still run, so that the first failure does
// not hide the rest; a phase whose prerequisite failed is skipped.
type scenarioPhases struct {
	t    *testing.T // the test's own: Logf reports as it goes
	list []*phase
}

// phase is one phase's record. Its methods mirror testing.T's, so that a
// phase's body reads as a test's: Errorf marks the phase failed, Fatal and
// Fatalf also stop it, Logf logs at once.
type phase struct {
	t    *testing.T
	name string
	errs []string
	skip string // why the phase did not run
}

// phaseStopped is the panic with which Fatal ends a phase.
type phaseStopped struct{}

// run runs body as the phase called name, unless a phase named in needs
// did not pass.
func (ps *scenarioPhases) run(name string, body func(t *phase), needs ...string) {
	p := &phase{t: ps.t, name: name}
	ps.list = append(ps.list, p)
	for _, need := range needs {
		i := slices.IndexFunc(ps.list, func(q *phase) bool { return q.name == need })
		if i < 0 || ps.list[i].skip != "" || len(ps.list[i].errs) > 0 {
			p.skip = need + " did not pass"
			return
		}
	}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(phaseStopped); !ok {
				panic(r)
			}
		}
	}()
	body(p)
}

// report runs one subtest per phase that ran or was skipped, with its
// failures.
func (ps *scenarioPhases) report() {
	for _, p := range ps.list {
		ps.t.Run(p.name, func(t *testing.T) {
			if p.skip != "" {
				t.Skip(p.skip)
			}
			for _, e := range p.errs {
				t.Error(e)
			}
		})
	}
}

func (p *phase) Logf(format string, args ...any) { p.t.Helper(); p.t.Logf(format, args...) }

func (p *phase) Errorf(format string, args ...any) { p.fail(fmt.Sprintf(format, args...)) }

func (p *phase) Fatalf(format string, args ...any) {
	p.fail(fmt.Sprintf(format, args...))
	panic(phaseStopped{})
}

func (p *phase) Fatal(args ...any) {
	p.fail(fmt.Sprint(args...))
	panic(phaseStopped{})
}

// fail records msg with the line of the phase's body that failed (the
// subtest reports it later, from elsewhere).
func (p *phase) fail(msg string) {
	if _, file, line, ok := runtime.Caller(2); ok {
		msg = fmt.Sprintf("%s:%d: %s", filepath.Base(file), line, msg)
	}
	p.errs = append(p.errs, msg)
}

// TestVirtualTimeScenario plays, on N nodes with the production heartbeat
// (30 s, dead after 90 s) and 25 ms links, in this order: a cold start
// (ring plus one chord per node, seed 11, 32 dials at a time) that must
// converge; the steady liveness traffic per node over three heartbeats; a
// registration, a graceful leave and a revocation, each timed until every
// node has it, without loss and then at 10 % loss; a tenth of the nodes
// frozen for 10 s at 5 % loss with no false verdict; a partition into two
// halves until each side sees the other dead, then healed and timed until
// every node sees every live agent alive again; and a tenth of the nodes
// crashing at once at 5 % loss, each seen dead by every live node within
// the timeout plus one heartbeat with no live node declared dead. Each
// phase is a subtest (TestVirtualTimeScenario/freeze, ...); the phases run
// on one mesh, one after the other, and a failed one does not stop those
// after it, except that nothing runs when the cold start fails. N is 30
// in make test; MESHAGENT_VIRTUAL_N sets it (make sim runs 100, make
// sim500 runs 500 under a soft memory limit of 1400 MiB).
func TestVirtualTimeScenario(t *testing.T) {
	n := 30
	if v, err := strconv.Atoi(os.Getenv("MESHAGENT_VIRTUAL_N")); err == nil {
		n = v
	}
	wall := time.Now()
	if os.Getenv("MESHAGENT_HEAP_PROFILE") != "" {
		runtime.MemProfileRate = 4096
	}
	var joined, left, revoked, died observed
	var watching atomic.Bool // deaths are recorded from the freeze on
	hook := func(name string, c *node.Config) {
		c.OnRevocation = func([]byte) { revoked.see("revocation", name) }
	}
	phases := &scenarioPhases{t: t}
	virtualMesh(t, n, hook, func(m *simulations.Mesh, opts simulations.Options) {
		virtualStart := time.Now() // the bubble's clock
		ctx := context.Background()
		watch := func(name string) {
			m.Agents[name].Node.OnEvent(func(e discovery.Event) {
				switch {
				case e.Reason == "joined":
					joined.see(e.Name, name)
				case e.To == discovery.Dead && e.Reason == "leave":
					left.see(e.Name, name)
				case e.To == discovery.Dead && watching.Load():
					died.see(e.Name, name)
				}
			})
		}
		for _, name := range m.Names() {
			watch(name)
		}
		// names are the live agents, in the order the phases pick from.
		names := m.Names()
		// MESHAGENT_VIRTUAL_ACTIONS=K: every agent advertises K actions
		// (scopes of 20 characters, a one-line description, a small
		// input schema), so that the memory figures include them; with
		// MESHAGENT_VIRTUAL_DISTINCT=1 each agent names its own (the
		// registry then has no names to share).
		distinct := os.Getenv("MESHAGENT_VIRTUAL_DISTINCT") == "1"
		if k, err := strconv.Atoi(os.Getenv("MESHAGENT_VIRTUAL_ACTIONS")); err == nil && k > 0 {
			for ai, name := range names {
				for i := range k {
					scope := fmt.Sprintf("call:tool-number-%03d", i)
					if distinct {
						scope = fmt.Sprintf("call:t%04d-number-%03d", ai, i) // as long as the shared ones
					}
					if err := m.Agents[name].Node.Advertise(node.Action{Scope: scope,
						Description: "A tool that does one thing with its input and says what it did.",
						InputSchema: []byte(`{"type":"object","properties":{"text":{"type":"string"}}}`)}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}

		phases.run("cold-start", func(t *phase) {
			start := time.Now()
			if err := m.WireSparse(ctx, 1, 11, 32); err != nil {
				t.Fatal(err)
			}
			wired := time.Since(start)
			// The live heap while the first records are in flight (each
			// in every node's gossip cache for five gossip heartbeats),
			// sampled every 2 s until convergence: the cold start's peak.
			var peak simulations.Stats
			var peakAt time.Duration
			sampled := time.Time{}
			if err := simulations.WaitForEvery(10*time.Minute, time.Second, func() error {
				if time.Since(sampled) >= 2*time.Second {
					sampled = time.Now()
					if st := m.Stats(); st.LiveHeapMiB > peak.LiveHeapMiB {
						peak, peakAt = st, time.Since(start)
					}
				}
				return m.Converged("alive")
			}); err != nil {
				t.Fatal(err)
			}
			t.Logf("N=%d: wiring (32 dials at a time) took %s, convergence %s more (virtual)", n,
				wired.Round(time.Millisecond), (time.Since(start) - wired).Round(time.Second))
			t.Logf("N=%d: peak during the cold start %.2f MiB heap per node after a GC, %s after the first dial (sampled every 2 s)",
				n, peak.LiveHeapMiB/float64(n), peakAt.Round(time.Second))
			st := m.Stats()
			t.Logf("N=%d: %.2f MiB heap (%.2f after a second GC), %d goroutines and %.2f MiB of their stacks per node", n, st.HeapInUseMiB/float64(n), st.LiveHeapMiB/float64(n), st.Goroutines/n, st.StackMiB/float64(n))
			links, conns := 0, 0
			for _, a := range m.Agents {
				links += a.Node.Stats().BeatLinks
				conns += len(a.Node.Host().Network().Peers())
			}
			t.Logf("N=%d: %.1f beat links and %.1f connections per node", n, float64(links)/float64(n), float64(conns)/float64(n))
			if path := os.Getenv("MESHAGENT_HEAP_PROFILE"); path != "" { // where the memory goes, once converged
				if f, err := os.Create(path); err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
				if f, err := os.Create(path + ".goroutines"); err == nil { // and what the goroutines are
					_ = pprof.Lookup("goroutine").WriteTo(f, 1)
					_ = f.Close()
				}
			}
		})

		phases.run("steady-traffic", func(t *phase) {
			var beats0, ps0 int64
			for _, a := range m.Agents {
				beats0 += a.Node.Stats().BeatBytesIn
				ps0 += a.Node.Stats().PubsubBytesIn
			}
			const window = 3
			time.Sleep(window * 30 * time.Second)
			var beats1, ps1 int64
			for _, a := range m.Agents {
				beats1 += a.Node.Stats().BeatBytesIn
				ps1 += a.Node.Stats().PubsubBytesIn
			}
			perNode := func(b int64) float64 { return float64(b) / float64(n) / (window * 30) * 8 / 1000 }
			t.Logf("N=%d: liveness traffic in per node: %.1f kbit/s (beats %.1f, pubsub %.1f), %.0f B per agent per heartbeat",
				n, perNode(beats1-beats0+ps1-ps0), perNode(beats1-beats0), perNode(ps1-ps0),
				float64(beats1-beats0+ps1-ps0)/float64(n)/float64(n-1)/window)
		}, "cold-start")

		// Registration, leave and revocation, without and with loss.
		for round, loss := range []float64{0, 0.10} {
			phases.run(fmt.Sprintf("join-leave-revoke-%.0f%%-loss", 100*loss), func(t *phase) {
				m.SetLoss(loss)
				newcomer := fmt.Sprintf("newcomer-%d", round)
				t0 := time.Now()
				if _, err := m.Add(ctx, newcomer, true, opts); err != nil {
					t.Fatal(err)
				}
				watch(newcomer)
				// The newcomer is live from here on; it joins the names
				// when the round ends, as the last of them.
				defer func() { names = append(names, newcomer) }()
				if err := m.Connect(ctx, newcomer, names[(round+1)*n/3]); err != nil {
					t.Fatal(err)
				}
				reg, err := joined.all(newcomer, names, t0, 2*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if reg > time.Second { // who was late, and how connected it was
					for _, l := range joined.latest(newcomer, names, t0, 3) {
						nm := strings.Fields(l)[0]
						a := m.Agents[nm].Node
						t.Logf("N=%d, loss %.0f%%: late registration: %s (%d beat links, %d connections)", n, 100*loss, l, a.Stats().BeatLinks, len(a.Host().Network().Peers()))
					}
				}
				leaver := names[len(names)-1-round]
				names = without(names, leaver)
				linksAtLeave := map[string]int{}
				for _, nm := range names {
					linksAtLeave[nm] = m.Agents[nm].Node.Stats().BeatLinks
				}
				t0 = time.Now()
				if err := m.Agents[leaver].Node.Close(); err != nil {
					t.Fatal(err)
				}
				lv, err := left.all(leaver, names, t0, 2*time.Minute)
				if err != nil {
					for _, nm := range names { // how those that missed it see the leaver
						if _, ok := left.when(leaver, nm); !ok {
							a := m.Agents[nm].Node
							t.Logf("%s sees %s as %q; it had %d beat links at the leave, has %d and %d connections", nm, leaver, m.StateOf(nm, leaver), linksAtLeave[nm], a.Stats().BeatLinks, len(a.Host().Network().Peers()))
						}
					}
					t.Fatal(err)
				}
				tok, err := m.Grant(names[0], []string{"read:logs"}, nil, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				rev, err := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				revoked.mu.Lock()
				delete(revoked.at, "revocation")
				revoked.mu.Unlock()
				t0 = time.Now()
				if err := m.Agents[names[1]].Node.Revoke(ctx, rev.Bytes()); err != nil {
					t.Fatal(err)
				}
				rv, err := revoked.all("revocation", names, t0, 2*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				// The newcomer joined a moment ago: gossipsub may not have
				// grafted it yet, and its second join-time exchange fills in.
				rvNew, err := revoked.all("revocation", []string{newcomer}, t0, 2*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("N=%d, loss %.0f%%: registration at every node in %s, leave in %s, revocation in %s (at the newcomer %s) (virtual)",
					n, 100*loss, reg.Round(time.Millisecond), lv.Round(time.Millisecond), rv.Round(time.Millisecond), rvNew.Round(time.Millisecond))
			}, "cold-start")
		}

		// Freeze a tenth for 10 s at 5 % loss: no verdict follows.
		phases.run("freeze", func(t *phase) {
			m.SetLoss(0.05)
			watching.Store(true)
			frozen := names[n/2 : n/2+max(1, n/10)]
			for _, f := range frozen {
				m.Agents[f].Node.Freeze(10 * time.Second)
			}
			time.Sleep(40 * time.Second)
			died.mu.Lock()
			falseDead, verdicts := len(died.at) > 0, fmt.Sprintf("%v", died.at)
			died.mu.Unlock()
			if falseDead {
				t.Fatalf("false dead verdicts after a 10 s freeze: %s", verdicts)
			}
		}, "cold-start")

		// Partition into halves until each side sees the other dead.
		phases.run("partition", func(t *phase) {
			half := len(names) / 2
			a, b := names[:half], names[half:]
			m.Partition(a, b)
			if err := simulations.WaitForEvery(5*time.Minute, time.Second, func() error {
				for _, x := range []string{a[0], a[len(a)-1]} {
					for _, y := range []string{b[0], b[len(b)-1]} {
						if st := m.StateOf(x, y); st != "dead" {
							return fmt.Errorf("%s sees %s as %s", x, y, st)
						}
						if st := m.StateOf(y, x); st != "dead" {
							return fmt.Errorf("%s sees %s as %s", y, x, st)
						}
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}, "cold-start")

		// Heal, without loss, until every live agent is alive everywhere.
		phases.run("heal", func(t *phase) {
			m.SetLoss(0)
			healed := time.Now()
			m.Heal()
			down := without(m.Names(), names...)
			if err := simulations.WaitForEvery(5*time.Minute, time.Second, func() error { return m.Converged("alive", down...) }); err != nil {
				t.Fatal(err)
			}
			t.Logf("N=%d: partition healed; every live agent alive everywhere again within %s (virtual, polled each second)", n, time.Since(healed).Round(time.Second))
		}, "cold-start")

		// A tenth crash at once at 5 % loss.
		phases.run("crash", func(t *phase) {
			died.mu.Lock()
			died.at = nil // the partition's verdicts
			died.mu.Unlock()
			m.SetLoss(0.05)
			victims := names[:max(1, n/10)]
			crash := time.Now()
			for _, v := range victims {
				m.Crash(v)
			}
			liveNames := without(names, victims...)
			var worst time.Duration
			for _, v := range victims {
				d, err := died.all(v, liveNames, crash, 5*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				worst = max(worst, d)
			}
			died.mu.Lock()
			verdicts := maps.Clone(died.at)
			died.mu.Unlock()
			for v, obs := range verdicts {
				if !slices.Contains(victims, v) {
					for o, at := range obs {
						t.Logf("%s saw %s dead %s after the crash; it has %d beat links, %d connections", o, v, at.Sub(crash), m.Agents[o].Node.Stats().BeatLinks, len(m.Agents[o].Node.Host().Network().Peers()))
					}
					t.Fatalf("live agent %s declared dead by %d nodes", v, len(obs))
				}
			}
			if worst > 120*time.Second {
				t.Fatalf("last detection after %s, more than the timeout plus one heartbeat (120 s)", worst)
			}
			t.Logf("N=%d: every crash seen by every live node within %s (virtual)", n, worst.Round(time.Millisecond))
		}, "cold-start")

		st := m.Stats()
		if path := os.Getenv("MESHAGENT_HEAP_PROFILE"); path != "" { // and at the end
			if f, err := os.Create(path + ".end"); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}
		t.Logf("N=%d: at the end %.2f MiB heap per node (%.2f after a second GC), %.2f MiB of stacks; peak RSS %.0f MiB", n, st.HeapInUseMiB/float64(st.Nodes), st.LiveHeapMiB/float64(st.Nodes), st.StackMiB/float64(st.Nodes), peakRSSMiB())
		t.Logf("N=%d: %s of virtual time, %.0f heartbeats", n, time.Since(virtualStart).Round(time.Second), time.Since(virtualStart).Seconds()/opts.HeartbeatInterval.Seconds())
	})
	t.Logf("N=%d: wall time %s on %d CPUs", n, time.Since(wall).Round(100*time.Millisecond), runtime.NumCPU())
	phases.report()
}

// A pause shorter than the timeout is not a death: the beat that fell due
// during the pause goes out when it ends. In virtual time the pause starts
// just before the subject's next beat and ends six seconds before its
// silence reaches the timeout (74 s of silence, dead after 80 s); had the
// subject waited for its next interval, the silence would have been 90 s.
func TestPauseUnderTheTimeoutIsNoDeath(t *testing.T) {
	const deadAfter = 80 * time.Second
	virtualMesh(t, 5, func(_ string, c *node.Config) { c.DeadAfter = deadAfter }, func(m *simulations.Mesh, opts simulations.Options) {
		if err := m.ConnectAll(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := simulations.WaitForEvery(5*time.Minute, time.Second, func() error { return m.Converged("alive") }); err != nil {
			t.Fatal(err)
		}
		d := watchDeaths(m)
		const observer, subject = "agent-00", "agent-01"
		heard := func() time.Time {
			for _, e := range m.Agents[observer].Node.Peers() {
				if e.Name == subject {
					return e.LastHeartbeat
				}
			}
			return time.Time{}
		}
		// Catch a beat as it arrives: the subject's next one falls due an
		// interval later.
		before := heard()
		if err := simulations.WaitForEvery(time.Minute, 10*time.Millisecond, func() error {
			if !heard().After(before) {
				return fmt.Errorf("%s has heard no new beat of %s", observer, subject)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(opts.HeartbeatInterval - time.Second)
		m.Agents[subject].Node.Freeze(45 * time.Second)
		var longest time.Duration // the observer's longest silence of the subject
		end := time.Now().Add(2 * deadAfter)
		for time.Now().Before(end) {
			longest = max(longest, time.Since(heard()))
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("longest silence %s at %s (dead after %s)", longest.Round(10*time.Millisecond), observer, deadAfter)
		if n := d.count(); n > 0 {
			t.Fatalf("%d false dead verdicts: %+v", n, d.by)
		}
		if longest >= deadAfter-5*time.Second {
			t.Fatalf("longest silence %s: the beat after the pause did not go out when it ended", longest)
		}
		if err := m.Converged("alive"); err != nil {
			t.Fatal(err)
		}
	})
}
