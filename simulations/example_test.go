//go:build meshsim

package simulations_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// Three agents on a ring over real TCP+TLS on loopback, with heartbeats
// every 100 ms: one crashes, and the others see it dead.
func Example() {
	ctx := context.Background()
	m, err := simulations.NewMesh(ctx, []string{"a", "b", "c"}, simulations.Options{
		HeartbeatInterval: 100 * time.Millisecond, DeadAfter: 300 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	if err := m.ConnectRing(ctx); err != nil {
		panic(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error { return m.Converged("alive") }); err != nil {
		panic(err)
	}
	m.Crash("c")
	_ = simulations.WaitFor(10*time.Second, func() error {
		if m.StateOf("a", "c") != "dead" || m.StateOf("b", "c") != "dead" {
			return errors.New("not yet")
		}
		return nil
	})
	fmt.Println("a sees b:", m.StateOf("a", "b"))
	fmt.Println("a sees c:", m.StateOf("a", "c"))
	// Output:
	// a sees b: alive
	// a sees c: dead
}
