package simulations_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/x/simlibp2p"
	"github.com/marcopolo/simnet"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// virtualMesh runs f on n nodes connected over simnet (QUIC + TLS 1.3 on
// a simulated network with 25 ms one-way latency and 20 Mbit/s links),
// inside testing/synctest: time is virtual, so production intervals (30 s
// heartbeats, dead after 90 s) cost only the CPU of the work done.
func virtualMesh(t *testing.T, n int, f func(m *simulations.Mesh)) {
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
		m, err := simulations.NewMesh(context.Background(), names(n), simulations.Options{
			HeartbeatInterval: 30 * time.Second, DeadAfter: 90 * time.Second,
			Configure: func(_ string, c *node.Config) {
				mu.Lock()
				next++
				ip := simnet.IntToPublicIPv4(next)
				mu.Unlock()
				c.ListenAddrs = []string{fmt.Sprintf("/ip4/%s/udp/8000/quic-v1", ip)}
				c.HostOptions = []libp2p.Option{simlibp2p.QUICSimnet(nw, link)}
				c.AdmissionTimeout = 10 * time.Second
			}})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		f(m)
	})
}

// TestVirtualTimeLiveness: a cold start of N nodes with the production
// heartbeat (30 s, dead after 90 s) converges, then a tenth of them crash
// at once under 5 % loss: every live node declares each of them dead within
// the timeout plus one heartbeat, and no live node is declared dead. N is
// 30 in make test; MESHAGENT_VIRTUAL_N sets it (make sim uses 100 and 200).
func TestVirtualTimeLiveness(t *testing.T) {
	n := 30
	if v, err := strconv.Atoi(os.Getenv("MESHAGENT_VIRTUAL_N")); err == nil {
		n = v
	}
	wall := time.Now()
	virtualMesh(t, n, func(m *simulations.Mesh) {
		ctx := context.Background()
		start := time.Now()
		if err := m.WireSparse(ctx, 1, 11, 32); err != nil {
			t.Fatal(err)
		}
		wired := time.Since(start)
		if err := simulations.WaitFor(10*time.Minute, func() error { return m.Converged("alive") }); err != nil {
			t.Fatal(err)
		}
		t.Logf("N=%d: wiring (32 dials at a time) took %s, convergence %s more (virtual)", n,
			wired.Round(time.Millisecond), (time.Since(start) - wired).Round(time.Millisecond))
		st := m.Stats()
		t.Logf("N=%d: %.2f MiB heap and %d goroutines per node", n, st.HeapInUseMiB/float64(n), st.Goroutines/n)

		var mu sync.Mutex
		deaths := map[string]map[string]time.Time{}
		for _, name := range m.Names() {
			m.Agents[name].Node.OnEvent(func(e discovery.Event) {
				if e.To == discovery.Dead {
					mu.Lock()
					if deaths[e.Name] == nil {
						deaths[e.Name] = map[string]time.Time{}
					}
					deaths[e.Name][name] = time.Now()
					mu.Unlock()
				}
			})
		}
		m.SetLoss(0.05)
		victims := m.Names()[:max(1, n/10)]
		crash := time.Now()
		for _, v := range victims {
			m.Crash(v)
		}
		if err := simulations.WaitFor(5*time.Minute, func() error {
			mu.Lock()
			defer mu.Unlock()
			for _, v := range victims {
				if len(deaths[v]) < n-len(victims) {
					return fmt.Errorf("%s seen dead by %d of %d", v, len(deaths[v]), n-len(victims))
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		var worst time.Duration
		for v, obs := range deaths {
			victim := false
			for _, x := range victims {
				victim = victim || x == v
			}
			if !victim {
				t.Fatalf("live agent %s declared dead by %d nodes", v, len(obs))
			}
			for _, at := range obs {
				worst = max(worst, at.Sub(crash))
			}
		}
		if worst > 120*time.Second {
			t.Fatalf("last detection after %s, more than the timeout plus one heartbeat (120 s)", worst)
		}
		t.Logf("N=%d: every crash seen by every live node within %s (virtual)", n, worst.Round(time.Millisecond))
	})
	t.Logf("N=%d: wall time %s on %d CPUs", n, time.Since(wall).Round(100*time.Millisecond), runtime.NumCPU())
}
