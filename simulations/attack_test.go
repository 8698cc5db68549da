//go:build meshsim

package simulations_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// TestMain lets SeparateAttacks start this test binary again as
// its attacker.
func TestMain(m *testing.M) {
	if ran, err := simulations.RunAttacker(); ran {
		if err != nil {
			fmt.Fprintln(os.Stderr, "attacker:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// Every attack of the threat model, each played as a sustained flood by a
// fresh attacker from a process of its own: the target rejects it with
// the attack's code (the mixed flood with any), no honest handler runs
// for it, and honest calls keep being served while it lasts.
func TestSeparateAttacks(t *testing.T) {
	rs, err := simulations.SeparateAttacks(context.Background(), 6, 200*time.Millisecond, simulations.Attacks)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(simulations.Attacks) {
		t.Fatalf("%d results for %d attacks", len(rs), len(simulations.Attacks))
	}
	for _, r := range rs {
		a := r.Attack
		if r.HandlerRuns != 0 {
			t.Errorf("%s: %d handler runs for the attacker", a.Name, r.HandlerRuns)
		}
		if r.Attempts == 0 || r.Rejected == 0 {
			t.Errorf("%s: attacker made %d attempts, target rejected %d", a.Name, r.Attempts, r.Rejected)
		}
		if a.Code != "" && r.WithCode == 0 {
			t.Errorf("%s: no rejection with code %s among %d", a.Name, a.Code, r.Rejected)
		}
		if r.Under.Calls-r.Under.Failures == 0 {
			t.Errorf("%s: no honest call served during the attack", a.Name)
		}
		t.Logf("%-14s honest calls/s %5.0f without, %5.0f under (%.2f ×); %6d attempts, %5d rejections (%d with %s), cut off %v, throttled %v",
			a.Name, r.Baseline.PerSecond(), r.Under.PerSecond(), r.Ratio(), r.Attempts, r.Rejected, r.WithCode, a.Code, r.CutOff, r.Throttled)
	}
}

// The mixed flood from inside the honest agents' process: refused, cut
// off, no honest handler run, honest calls still served.
func TestAttackInProcess(t *testing.T) {
	r, err := simulations.AttackScenario(context.Background(), 6, 500*time.Millisecond*raceScale)
	if err != nil {
		t.Fatal(err)
	}
	if r.HandlerRuns != 0 {
		t.Fatalf("%d handler runs for the attacker", r.HandlerRuns)
	}
	if r.Rejected == 0 || !r.CutOff {
		t.Fatalf("target rejected %d of %d attempts, cut off: %v", r.Rejected, r.Attempts, r.CutOff)
	}
	if r.Under.Calls-r.Under.Failures == 0 {
		t.Fatal("no honest call served during the attack")
	}
}
