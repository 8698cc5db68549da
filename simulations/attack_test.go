package simulations_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// TestMain lets SeparateAttackScenario start this test binary again as
// its attacker.
func TestMain(m *testing.M) {
	if simulations.RunAttacker() {
		return
	}
	os.Exit(m.Run())
}

// The flood from a separate process is refused and audited, no honest
// handler runs for it, and honest calls keep being served.
func TestSeparateAttacker(t *testing.T) {
	r, err := simulations.SeparateAttackScenario(context.Background(), 6, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.HandlerRuns != 0 {
		t.Fatalf("%d handler runs for the attacker", r.HandlerRuns)
	}
	if r.Attempts == 0 || r.Rejected == 0 {
		t.Fatalf("attacker sent %d, target rejected %d", r.Attempts, r.Rejected)
	}
	if r.Under.Calls-r.Under.Failures == 0 {
		t.Fatal("no honest call served during the attack")
	}
	t.Logf("honest calls/s %.0f without the attack, %.0f under it (%.2f ×); %d attempts, %d audited rejections",
		r.Baseline.PerSecond(), r.Under.PerSecond(), r.Under.PerSecond()/r.Baseline.PerSecond(), r.Attempts, r.Rejected)
}
