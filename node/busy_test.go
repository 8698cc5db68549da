//go:build meshsim

package node_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// A node at MaxConcurrentCalls answers busy, with a retry-after, and
// charges the caller nothing for it: refused three budgets' worth of
// times while its only slot is held, the caller is never refused
// unchecked, no handler runs for the refused calls, and once the slot is
// free its next call passes at once.
func TestBusyRefusalsAreNotCharged(t *testing.T) {
	const n = 3 * budgetBurst
	m, runs := blameMesh(t, simulations.Options{Configure: func(name string, c *node.Config) {
		if name == "worker" {
			c.MaxConcurrentCalls = 1
		}
	}})
	worker := m.Agents["worker"].Node
	hold, holding := make(chan struct{}), make(chan struct{}, 1)
	var held atomic.Int32
	_ = worker.Handle("read:slow", func(context.Context, *node.Request) ([]byte, error) {
		held.Add(1)
		holding <- struct{}{}
		<-hold
		return nil, nil
	})
	if _, err := m.Grant("orchestrator", []string{"read:slow"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { _, err := call(m, "orchestrator", "worker", "read:slow"); first <- err }()
	<-holding
	before := worker.Stats().Throttled
	var noRetry atomic.Int32
	start := time.Now()
	codes := refuseMany(t, n, func() error {
		_, err := call(m, "orchestrator", "worker", "read:logs")
		if d, ok := protocol.RetryAfter(err); !ok || d <= 0 {
			noRetry.Add(1)
		}
		return err
	})
	t.Logf("%d busy answers in %s", n, time.Since(start).Round(time.Millisecond))
	if noRetry.Load() != 0 {
		t.Fatalf("%d refusals without a retry-after", noRetry.Load())
	}
	close(hold)
	if err := <-first; err != nil {
		t.Fatalf("the call that held the slot: %v", err)
	}
	if held.Load() != 1 {
		t.Fatalf("the slow handler ran %d times", held.Load())
	}
	notCharged(t, m, runs, protocol.CodeBusy, n, codes, worker.Stats().Throttled-before)
}

// A node runs at most MaxConcurrentCalls handlers at once, for all callers
// together; a call past the bound is answered busy at once, with a
// retry-after, and its handler never runs: the node sheds the load rather
// than queue it. Calls from four callers, 100 at once against a bound of
// 8: never more than 8 handlers run, the 92 others are answered busy
// before any handler returns, and the 8 complete.
func TestConcurrentCallsAreBounded(t *testing.T) {
	// Each caller within the 32 streams a peer may have in negotiation.
	const bound, each = 8, 25
	names := []string{"orchestrator", "reporter", "indexer", "auditor"}
	callers := len(names)
	m, _ := blameMesh(t, simulations.Options{Configure: func(name string, c *node.Config) {
		if name == "worker" {
			c.MaxConcurrentCalls = bound
		}
	}}, names[1:]...)
	for _, name := range names {
		if _, err := m.Grant(name, []string{"read:slow"}, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	worker := m.Agents["worker"].Node
	hold := make(chan struct{})
	var running, most, runs atomic.Int32
	_ = worker.Handle("read:slow", func(ctx context.Context, _ *node.Request) ([]byte, error) {
		runs.Add(1)
		r := running.Add(1)
		defer running.Add(-1)
		for {
			if old := most.Load(); r <= old || most.CompareAndSwap(old, r) {
				break
			}
		}
		select {
		case <-hold:
		case <-ctx.Done():
		}
		return []byte("done"), nil
	})
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, callers*each)
	var wg sync.WaitGroup
	start := time.Now()
	for _, from := range names {
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				_, err := call(m, from, "worker", "read:slow")
				results <- result{err, time.Since(t0)}
			}()
		}
	}
	// Every call past the bound is answered while the 8 still hold their
	// slots.
	var busy []result
	for len(busy) < callers*each-bound {
		select {
		case r := <-results:
			if d, ok := protocol.RetryAfter(r.err); !ok || d <= 0 || trust.CodeOf(r.err) != protocol.CodeBusy {
				t.Fatalf("a call past the bound: %v (want busy with a retry-after)", r.err)
			}
			busy = append(busy, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d calls answered busy in 10 s, want %d; %d handlers running", len(busy), callers*each-bound, running.Load())
		}
	}
	shed := time.Since(start)
	if got := running.Load(); got != bound {
		t.Fatalf("%d handlers running once the rest was shed, want %d", got, bound)
	}
	close(hold)
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Fatalf("a call within the bound: %v", r.err)
		}
	}
	var slowest time.Duration
	for _, r := range busy {
		slowest = max(slowest, r.took)
	}
	t.Logf("%d calls at once, bound %d: at most %d handlers ran at once, %d runs; %d answered busy within %s (slowest busy answer %s)",
		callers*each, bound, most.Load(), runs.Load(), len(busy), shed.Round(time.Millisecond), slowest.Round(time.Millisecond))
	if most.Load() > bound || runs.Load() != bound {
		t.Fatalf("at most %d handlers at once and %d runs, bound %d", most.Load(), runs.Load(), bound)
	}
	// The slots are free again.
	if _, err := call(m, "orchestrator", "worker", "read:slow"); err != nil {
		t.Fatal(err)
	}
	audited := false
	for _, a := range m.Audit() {
		audited = audited || a.Direction == "in" && a.Decision == "reject" && a.Reason == string(protocol.CodeBusy)
	}
	if !audited {
		t.Fatal("no busy refusal audited at the worker")
	}
}

// A handler that sheds load itself returns protocol.Busy: its caller gets
// busy with that retry-after (at most a minute: the callee's word), not
// handler_error; any other handler error stays handler_error.
func TestBusyHandlerAnswersBusy(t *testing.T) {
	m, _ := blameMesh(t, simulations.Options{})
	worker := m.Agents["worker"].Node
	var ask atomic.Int64
	_ = worker.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) {
		if d := time.Duration(ask.Load()); d != 0 {
			return nil, protocol.Busy(d, "the queue of read:logs is full")
		}
		return nil, errors.New("disk on fire")
	})
	for ask0, want := range map[time.Duration]time.Duration{2 * time.Second: 2 * time.Second, time.Hour: time.Minute} {
		ask.Store(int64(ask0))
		_, err := call(m, "orchestrator", "worker", "read:logs")
		d, ok := protocol.RetryAfter(err)
		if !ok || d != want || !errors.Is(err, &trust.Error{Code: protocol.CodeBusy}) || !strings.Contains(err.Error(), "the queue of read:logs is full") {
			t.Fatalf("a handler busy for %s: %v (retry after %s, want %s)", ask0, err, d, want)
		}
	}
	ask.Store(0)
	_, err := call(m, "orchestrator", "worker", "read:logs")
	if _, ok := protocol.RetryAfter(err); ok || trust.CodeOf(err) != protocol.CodeHandlerError {
		t.Fatalf("a failing handler: %v, want handler_error", err)
	}
}
