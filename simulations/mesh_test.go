//go:build meshsim

package simulations_test

// The set-up the tests of this package share: meshes, their convergence,
// and the dead verdicts they reach.

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/simulations"
)

// Heartbeat and timeout of these tests: three heartbeats, as in
// production, scaled up under the race detector, which slows everything
// about tenfold.
var (
	hb   = 100 * time.Millisecond * raceScale
	dead = 3 * hb
)

// newMesh starts n agents (simulations.AgentNames), with the heartbeat and
// timeout above unless opts sets them, checks for leaked goroutines once
// the test's cleanups have closed it, and closes it when the test ends.
func newMesh(t *testing.T, n int, opts simulations.Options) *simulations.Mesh {
	t.Helper()
	simulations.CheckLeaks(t) // registered first, so it runs after the mesh closed
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval, opts.DeadAfter = hb, dead
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, simulations.AgentNames(n), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// converge waits until every agent of m sees every other alive.
func converge(t *testing.T, m *simulations.Mesh, timeout time.Duration) {
	t.Helper()
	if err := simulations.WaitFor(timeout, func() error { return m.Converged("alive") }); err != nil {
		t.Fatal(err)
	}
}

// wiredMesh is newMesh with every pair of agents connected (ring: a ring
// only), returned once every agent sees every other alive.
func wiredMesh(t *testing.T, n int, opts simulations.Options, ring bool) *simulations.Mesh {
	t.Helper()
	m := newMesh(t, n, opts)
	connect := m.ConnectAll
	if ring {
		connect = m.ConnectRing
	}
	if err := connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	converge(t, m, 10*time.Second)
	return m
}

// deaths collects, per observer, the dead verdicts it reaches.
type deaths struct {
	mu sync.Mutex
	by map[string][]discovery.Event
}

func watchDeaths(m *simulations.Mesh) *deaths {
	d := &deaths{by: map[string][]discovery.Event{}}
	for _, name := range m.Names() {
		m.Agents[name].Node.OnEvent(func(e discovery.Event) {
			if e.To == discovery.Dead {
				d.mu.Lock()
				d.by[name] = append(d.by[name], e)
				d.mu.Unlock()
			}
		})
	}
	return d
}

func (d *deaths) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, evs := range d.by {
		n += len(evs)
	}
	return n
}
