//go:build meshsim

package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// An honest pair of agents at full speed, with the production replay
// window, is never locked out by its own traffic (issue 12: after 32 767
// accepted calls the replay guard's per-sender share was full, every
// further call was refused replay_full, the refusals throttled the caller,
// and the pair stayed locked out for the rest of the five minutes).
func TestHonestLoadIsNeverLockedOut(t *testing.T) {
	if raceEnabled {
		t.Skip("CPU-bound: make test runs it without -race")
	}
	m, runs := convergedMesh(t)
	const calls, workers = 40_000, 8
	var next, failed atomic.Int64
	codes := map[trust.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= calls {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := m.Agents["orchestrator"].Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, nil)
				cancel()
				if err != nil {
					failed.Add(1)
					mu.Lock()
					codes[trust.CodeOf(err)]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d calls in %s (%.0f a second), %d failed %v, %d handler runs", calls, elapsed.Round(time.Millisecond),
		calls/elapsed.Seconds(), failed.Load(), codes, runs.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d honest calls refused: %v", failed.Load(), calls, codes)
	}
}

// A sender that restarts inside the replay window is not refused (its new
// nonces are new), while its envelopes from before the restart stay
// refused as replays for the rest of the window.
func TestSenderRestartInsideTheWindow(t *testing.T) {
	m, runs := convergedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	worker := m.Agents["worker"].ID()
	old, err := m.Agents["orchestrator"].Node.SealRequest(worker, "read:logs", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Agents["orchestrator"].Node.SendRaw(ctx, worker, old); err != nil {
		t.Fatalf("the first send: %v", err)
	}
	if _, err := m.Restart(ctx, "orchestrator", "worker"); err != nil {
		t.Fatal(err)
	}
	orch := m.Agents["orchestrator"].Node
	for i := range 100 {
		if _, err := orch.Call(ctx, worker, "read:logs", nil, nil); err != nil {
			t.Fatalf("call %d after the restart: %v", i, err)
		}
	}
	before := runs.Load()
	if _, err := orch.SendRaw(ctx, worker, old); trust.CodeOf(err) != protocol.CodeReplay {
		t.Fatalf("an envelope from before the restart, sent again: %v, want replay", err)
	}
	if runs.Load() != before {
		t.Fatal("the handler ran for the replay")
	}
}
