//go:build meshsim

package simulations

import (
	"context"
	"fmt"
	"time"
)

// PartitionResult is the time a split mesh takes to agree again.
type PartitionResult struct {
	N         int
	Heartbeat time.Duration
	Split     time.Duration // until each side saw the whole other side dead
	Heal      time.Duration // from healing until every node saw every other alive
}

// PartitionScenario splits n agents in two halves, waits until each side
// has declared the other dead, heals, and measures re-convergence.
func PartitionScenario(ctx context.Context, n int, hb time.Duration) (PartitionResult, error) {
	res := PartitionResult{N: n, Heartbeat: hb}
	m, err := NewMesh(ctx, AgentNames(n), Options{HeartbeatInterval: hb, DeadAfter: 3 * hb})
	if err != nil {
		return res, err
	}
	defer m.Close()
	if err := m.ConnectSparse(ctx, 1, 9); err != nil {
		return res, err
	}
	if err := WaitFor(30*time.Second, func() error { return m.Converged("alive") }); err != nil {
		return res, err
	}
	all := m.Names()
	left, right := all[:n/2], all[n/2:]
	start := time.Now()
	m.Partition(left, right)
	if err := WaitFor(30*time.Second, func() error {
		for _, a := range left {
			for _, b := range right {
				if m.StateOf(a, b) != "dead" || m.StateOf(b, a) != "dead" {
					return fmt.Errorf("%s and %s still see each other", a, b)
				}
			}
		}
		return nil
	}); err != nil {
		return res, err
	}
	res.Split = time.Since(start)
	m.Heal()
	start = time.Now()
	for i := 0; i < 3 && i < len(left) && i < len(right); i++ {
		if err := m.Connect(ctx, left[i], right[i]); err != nil {
			return res, err
		}
	}
	if err := WaitFor(60*time.Second, func() error { return m.Converged("alive") }); err != nil {
		return res, err
	}
	res.Heal = time.Since(start)
	return res, nil
}
