//go:build meshsim

package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// budgetBurst is the node's rejection budget at once (gate.RejectBurst): each
// case below is refused three times that.
const budgetBurst = 100

// notCharged checks a sender's n refusals for a reason of the receiver's
// own: every one refused want after the checks (none unchecked: a
// throttled call is reset, unavailable), no handler run, and its next
// valid call passes at once.
func notCharged(t *testing.T, m *simulations.Mesh, runs *atomic.Int32, want trust.Code, n int, codes map[trust.Code]int, throttled int64) {
	t.Helper()
	t.Logf("%d calls refused: %v; %d refused unchecked", n, codes, throttled)
	if codes[want] != n {
		t.Fatalf("%d of %d calls refused %s: %v", codes[want], n, want, codes)
	}
	if throttled != 0 {
		t.Fatalf("the worker refused %d of the sender's calls unchecked: it was throttled", throttled)
	}
	if got := runs.Load(); got != 0 {
		t.Fatalf("the handler ran %d times for refused calls", got)
	}
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("the next valid call: %v", err)
	}
}

// refuseMany makes n calls with attempt from 4 goroutines and counts the
// refusals by code; a call that passes is an error.
func refuseMany(t *testing.T, n int, attempt func() error) map[trust.Code]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[trust.Code]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				err := attempt()
				mu.Lock()
				codes[trust.CodeOf(err)]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if codes[""] > 0 {
		t.Fatalf("%d of %d calls passed: %v", codes[""], n, codes)
	}
	return codes
}

// A refusal for the receiver's own clock or registry spends nothing of
// the sender's rejection budget: refused three budgets' worth of times,
// the sender is never refused unchecked (every refusal carries its
// reason, none is a reset), and its next valid call passes at once. A
// refusal the sender could have avoided (no token) still throttles it. No
// handler runs for a refused call. (Until receiverSide, each of these
// senders was throttled past 100 refusals, as issue 12's honest pair was
// for replay_full. Busy: TestBusyRefusalsAreNotCharged.)
func TestReceiverSideRefusalsAreNotCharged(t *testing.T) {
	ctx := context.Background()
	const n = 3 * budgetBurst

	t.Run("stale: the receiver's clock is off", func(t *testing.T) {
		var skew atomic.Int64
		// DeadAfter longer than the jump: no verdict comes of the skewed
		// clock while the test runs.
		m, runs := blameMesh(t, simulations.Options{DeadAfter: time.Hour, Configure: func(name string, c *node.Config) {
			if name == "worker" {
				c.Clock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			}
		}})
		worker := m.Agents["worker"].Node
		before := worker.Stats().Throttled
		skew.Store(int64(6 * time.Minute))
		codes := refuseMany(t, n, func() error { _, err := call(m, "orchestrator", "worker", "read:logs"); return err })
		skew.Store(0)
		notCharged(t, m, runs, protocol.CodeStale, n, codes, worker.Stats().Throttled-before)
	})

	t.Run("dead: a holder of the chain, in the receiver's registry", func(t *testing.T) {
		m, runs := blameMesh(t, simulations.Options{HeartbeatInterval: 200 * time.Millisecond, DeadAfter: 2 * time.Second}, "delegator")
		root, err := m.Grant("delegator", []string{"read:logs"}, []string{"read:logs"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		tok, err := root.Delegate(m.Agents["delegator"].Identity, m.Agents["orchestrator"].Identity.Public(),
			trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now)
		if err != nil {
			t.Fatal(err)
		}
		m.Crash("delegator")
		if err := m.WaitState("worker", "delegator", "dead", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		worker := m.Agents["worker"].Node
		before := worker.Stats().Throttled
		codes := refuseMany(t, n, func() error {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := m.Agents["orchestrator"].Node.Call(c, worker.ID(), "read:logs", nil, &node.CallOptions{Token: tok})
			return err
		})
		notCharged(t, m, runs, protocol.CodeDead, n, codes, worker.Stats().Throttled-before)
	})

	t.Run("no_token: the sender's doing is still charged", func(t *testing.T) {
		m, runs := blameMesh(t, simulations.Options{})
		worker := m.Agents["worker"].Node
		before := worker.Stats().Throttled
		codes := refuseMany(t, n, func() error { _, err := call(m, "orchestrator", "worker", "read:secrets"); return err })
		throttled := worker.Stats().Throttled - before
		t.Logf("%d calls refused: %v; %d refused unchecked", n, codes, throttled)
		if codes[protocol.CodeNoToken] < budgetBurst || codes[protocol.CodeUnavailable] == 0 || throttled == 0 {
			t.Fatalf("%d calls without a token: %v, %d refused unchecked: not throttled", n, codes, throttled)
		}
		if runs.Load() != 0 {
			t.Fatal("the handler ran")
		}
		if err := simulations.WaitFor(10*time.Second, func() error {
			_, err := call(m, "orchestrator", "worker", "read:logs")
			return err
		}); err != nil {
			t.Fatalf("once the budget refills: %v", err)
		}
	})
}
