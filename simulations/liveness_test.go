//go:build meshsim

package simulations_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// Each node is connected to two others only: the rest it learns from the
// join-time exchange and the gossip of records.
func TestRegistryConvergesOnARing(t *testing.T) {
	wiredMesh(t, 10, simulations.Options{}, true)
}

func TestCrashIsDetectedAndRestartRevives(t *testing.T) {
	m := wiredMesh(t, 6, simulations.Options{}, false)
	ctx := context.Background()
	victim := "agent-03"
	start := time.Now()
	m.Crash(victim)
	if err := simulations.WaitFor(5*time.Second, func() error {
		for _, n := range m.Names() {
			if n != victim && m.StateOf(n, victim) != "dead" {
				return fmt.Errorf("%s sees %s as %s", n, victim, m.StateOf(n, victim))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("every node saw the crash after %s (timeout %s, heartbeat %s)", time.Since(start), dead, hb)
	if _, err := m.Restart(ctx, victim, "agent-00"); err != nil {
		t.Fatal(err)
	}
	converge(t, m, 10*time.Second)
}

func TestGracefulLeaveDropsAtOnce(t *testing.T) {
	m := wiredMesh(t, 5, simulations.Options{HeartbeatInterval: 200 * time.Millisecond, DeadAfter: 30 * time.Second}, false)
	m.Agents["agent-04"].Node.Close()
	// Far sooner than the 30 s timeout: the leave itself says so.
	if err := simulations.WaitFor(10*time.Second, func() error {
		for _, n := range m.Names()[:4] {
			if st := m.StateOf(n, "agent-04"); st != "dead" {
				return fmt.Errorf("%s sees agent-04 as %s", n, st)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A dead agent that speaks again without a fresh heartbeat is refused with
// reason dead, and no handler runs; its next heartbeat restores it.
func TestDeadAgentRefusedUntilItHeartbeats(t *testing.T) {
	m := newMesh(t, 3, simulations.Options{})
	ctx := context.Background()
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	worker := m.Agents["agent-00"]
	_ = worker.Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { runs.Add(1); return nil, nil })
	if _, err := m.Grant("agent-01", []string{"read:logs"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	caller := m.Agents["agent-01"]
	if _, err := caller.Node.Call(ctx, worker.ID(), "read:logs", nil, nil); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	caller.Node.Freeze(2*time.Second + 2*dead) // a long pause: no heartbeats
	if err := m.WaitSilentDead("agent-00", "agent-01", frozen, dead+hb, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	before := runs.Load()
	var err error
	_ = simulations.WaitFor(3*time.Second, func() error {
		_, err = caller.Node.Call(ctx, worker.ID(), "read:logs", nil, nil)
		if trust.CodeOf(err) == protocol.CodeUnavailable {
			return err // its connection was closed; the next call redials
		}
		return nil
	})
	if trust.CodeOf(err) != protocol.CodeDead {
		t.Fatalf("a dead agent's call: %v", err)
	}
	if runs.Load() != before {
		t.Fatal("handler ran for a dead agent")
	}
	// After the pause it heartbeats, and is served again. (Wait for the
	// verdict rather than retry the call: a peer that keeps sending what is
	// refused is cut off as a flood.)
	if err := m.WaitState("agent-00", "agent-01", "alive", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := caller.Node.Call(ctx, worker.ID(), "read:logs", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// No live agent is declared dead under 10 % random loss of registry
// messages, nor when one freezes for less than the timeout.
func TestNoFalseDeaths(t *testing.T) {
	m := wiredMesh(t, 6, simulations.Options{}, false)
	// The verdicts above may rest on the records of admission: wait until
	// heartbeats flow, so that the freeze below starts in steady state.
	converged := time.Now()
	if err := simulations.WaitFor(10*time.Second, func() error { return m.HeardSince(converged) }); err != nil {
		t.Fatal(err)
	}
	d := watchDeaths(m)
	m.SetLoss(0.10)
	m.Agents["agent-02"].Node.Freeze(dead / 2)
	// 30 heartbeat intervals of loss, observed by polling the verdicts.
	deadline := time.Now().Add(30 * hb)
	for time.Now().Before(deadline) {
		if n := d.count(); n > 0 {
			t.Fatalf("%d false dead verdicts: %+v", n, d.by)
		}
		time.Sleep(hb)
	}
	if err := m.Converged("alive"); err != nil {
		t.Fatal(err)
	}
}

func TestRevocationReachesEveryNode(t *testing.T) {
	m := wiredMesh(t, 6, simulations.Options{}, true)
	ctx := context.Background()
	tok, _ := m.Grant("agent-01", []string{"read:logs"}, nil, time.Hour)
	holder := m.Agents["agent-01"].Identity.Public()
	rev, err := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := m.Agents["agent-04"].Node.Revoke(ctx, rev.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(5*time.Second, func() error {
		for _, n := range m.Names() {
			if err := m.Agents[n].Node.Verifier().Authorize(tok, holder, "read:logs", time.Now()); trust.CodeOf(err) != trust.CodeRevoked {
				return fmt.Errorf("%s still accepts the token: %v", n, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("revocation reached all 6 nodes (ring) in %s", time.Since(start))
	// A revocation not signed by the anchor is refused.
	fake, _ := trust.GenerateAnchorKey(nil)
	forged, _ := trust.RevokeAgent(fake, holder, time.Now(), time.Now(), time.Hour)
	if err := m.Agents["agent-02"].Node.Revoke(ctx, forged.Bytes()); trust.CodeOf(err) != trust.CodeUntrustedRoot {
		t.Fatalf("forged revocation: %v", err)
	}
}

// Credentials rotate every couple of seconds under steady calls: no call
// fails, and the caller's credential changes.
func TestRotationUnderLoad(t *testing.T) {
	m := newMesh(t, 3, simulations.Options{CredentialTTL: 3 * time.Second, Configure: func(name string, c *node.Config) {
		c.RenewAfter = 0.5
	}})
	// One more agent is an issuer (the others are not).
	ctx := context.Background()
	_, err := m.Add(ctx, "issuer", true, simulations.Options{HeartbeatInterval: hb, DeadAfter: dead, CredentialTTL: time.Hour,
		Configure: func(_ string, c *node.Config) { c.Issuer = m.Anchor }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	worker := m.Agents["agent-00"]
	_ = worker.Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { runs.Add(1); return nil, nil })
	m.Grant("agent-01", []string{"read:logs"}, nil, time.Hour)
	caller := m.Agents["agent-01"]
	first := caller.Node.Credential().Serial
	calls, failures := 0, 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := caller.Node.Call(ctx, worker.ID(), "read:logs", nil, nil); err != nil {
			failures++
			t.Logf("call failed: %v", err)
		}
		calls++
	}
	if failures > 0 {
		t.Fatalf("%d of %d calls failed across rotations", failures, calls)
	}
	if caller.Node.Credential().Serial == first {
		t.Fatal("the credential was never renewed")
	}
	if caller.Node.Credential().Expires.Before(time.Now()) {
		t.Fatal("the current credential has expired")
	}
	t.Logf("%d calls, 0 failures; credential now expires %s", calls, caller.Node.Credential().Expires)
}

func TestPartitionHeals(t *testing.T) {
	m := wiredMesh(t, 6, simulations.Options{}, false)
	ctx := context.Background()
	left, right := m.Names()[:3], m.Names()[3:]
	m.Partition(left, right)
	// Wait until each side sees the whole other side dead (each dead
	// verdict closes the connections to that agent).
	if err := simulations.WaitFor(10*time.Second, func() error {
		for _, a := range left {
			for _, b := range right {
				if st := m.StateOf(a, b); st != "dead" {
					return fmt.Errorf("%s sees %s as %s", a, b, st)
				}
				if st := m.StateOf(b, a); st != "dead" {
					return fmt.Errorf("%s sees %s as %s", b, a, st)
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("partition not noticed: %v", err)
	}
	m.Heal()
	start := time.Now()
	if err := m.Connect(ctx, left[0], right[0]); err != nil {
		t.Fatal(err)
	}
	converge(t, m, 10*time.Second)
	t.Logf("re-converged %s after healing", time.Since(start))
}

// Agents crash and come back one after another; once the churn stops,
// every node sees every other alive again.
func TestChurn(t *testing.T) {
	m := newMesh(t, 8, simulations.Options{})
	ctx := context.Background()
	if err := m.ConnectSparse(ctx, 1, 3); err != nil {
		t.Fatal(err)
	}
	converge(t, m, 10*time.Second)
	churned, err := m.Churn(ctx, 2*dead, 5, 99)
	if err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(15*time.Second, func() error { return m.Converged("alive") }); err != nil {
		t.Fatalf("after churning %v: %v", churned, err)
	}
}
