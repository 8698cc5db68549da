//go:build meshsim

package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
)

// A revocation that reuses the ID of one the mesh holds, with another
// target and a signature that does not verify, is refused by Node.Revoke
// (never reported as applied, never published), and no node applies it.
func TestForgedRevocationUnderAKnownID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"a", "b", "c"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	tok, err := m.Grant("a", []string{"read:logs"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Agents["a"].Node.Revoke(ctx, genuine.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		for _, name := range m.Names() {
			if n := m.Agents[name].Node.Stats().Revocations; n != 1 {
				return fmt.Errorf("%s holds %d revocations", name, n)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The forgery: the genuine one's ID and signature over a body that
	// revokes agent c instead.
	var signed trustpb.Signed
	if err := proto.Unmarshal(genuine.Bytes(), &signed); err != nil {
		t.Fatal(err)
	}
	var body trustpb.RevocationBody
	if err := proto.Unmarshal(signed.Body, &body); err != nil {
		t.Fatal(err)
	}
	victim := m.Agents["c"].Identity.Public()
	body.LinkId, body.Agent, body.Before = nil, victim[:], time.Now().Add(time.Hour).Unix()
	signed.Body, _ = proto.Marshal(&body)
	forged, _ := proto.Marshal(&signed)
	err = m.Agents["b"].Node.Revoke(ctx, forged)
	if trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("Revoke of a forgery under a known ID: %v, want bad_signature", err)
	}
	// Every node still holds only the genuine one, and lists c alive.
	for _, name := range m.Names() {
		if n := m.Agents[name].Node.Stats().Revocations; n != 1 {
			t.Fatalf("%s holds %d revocations after the forgery", name, n)
		}
	}
	for _, name := range []string{"a", "b"} {
		if st := m.StateOf(name, "c"); st != "alive" {
			t.Fatalf("%s sees c %s after the forgery", name, st)
		}
	}
}

// A chain through a dead delegator is refused with dead; once the
// delegator's credential expires and the registry forgets it, the chain is
// still refused (unlisted), with no heartbeat from it: the refusal does
// not lapse into acceptance, and the handler never runs.
func TestDeadDelegatorRefusalOutlivesItsCredential(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	noSkew := func(_ string, c *node.Config) { c.Policy.ClockSkew = 0 }
	opts := simulations.Options{HeartbeatInterval: 100 * time.Millisecond, DeadAfter: time.Second, Configure: noSkew}
	m, err := simulations.NewMesh(ctx, []string{"target", "holder"}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	short := opts
	short.CredentialTTL = 10 * time.Second
	del, err := m.Add(ctx, "delegator", true, short)
	if err != nil {
		t.Fatal(err)
	}
	expires := del.Credential.Expires
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	target := m.Agents["target"]
	_ = target.Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { runs.Add(1); return nil, nil })
	root, err := m.Grant("delegator", []string{"read:logs"}, []string{"read:logs"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	holder := m.Agents["holder"]
	now := time.Now()
	tok, err := root.Delegate(del.Identity, holder.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now)
	if err != nil {
		t.Fatal(err)
	}
	call := func() error {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := holder.Node.Call(c, target.ID(), "read:logs", nil, &node.CallOptions{Token: tok})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("the delegated chain while its delegator lives: %v", err)
	}
	m.Crash("delegator")
	if err := m.WaitState("target", "delegator", "dead", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	before := runs.Load()
	if err := call(); trust.CodeOf(err) != protocol.CodeDead {
		t.Fatalf("a chain through a dead delegator: %v, want dead", err)
	}
	// The delegator's credential expires; the target forgets it.
	if err := simulations.WaitFor(time.Until(expires)+5*time.Second, func() error {
		if st := m.StateOf("target", "delegator"); st != "" {
			return fmt.Errorf("the target still lists the delegator: %s", st)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	err = call()
	if trust.CodeOf(err) != protocol.CodeUnlisted {
		t.Fatalf("a chain through a dead delegator whose credential expired: %v, want unlisted", err)
	}
	if !strings.Contains(err.Error(), "link 0: chain holder") {
		t.Fatalf("the refusal does not name link 0 (the delegator's): %v", err)
	}
	if runs.Load() != before {
		t.Fatal("the handler ran for a chain through a dead delegator")
	}
}

// An issuer of anchor A that also trusts anchor B renews only credentials
// of A: an agent with B's credential is refused, and stays out of a node
// that trusts only A. This is what happens after an anchor rotation that
// removed B for a compromise, while an issuer still has B configured.
func TestRenewalKeepsTheIssuer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"verifier"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	b, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The issuer holds A's key and still trusts B.
	iss, err := m.Add(ctx, "issuer", true, simulations.Options{Configure: func(_ string, c *node.Config) {
		c.Issuer = m.Anchor
		c.Policy.Anchors = append(c.Policy.Anchors, b.Public())
	}})
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan *trust.Credential, 1)
	partner, err := m.Add(ctx, "partner", true, simulations.Options{Configure: func(_ string, c *node.Config) {
		c.Credential, _ = trust.IssueCredential(b, c.Identity.Public(), "partner", time.Now().Add(-time.Second), time.Hour)
		c.Policy.Anchors = append(c.Policy.Anchors, b.Public())
		c.RenewAfter = 0.001 // renew at the first heartbeat
		c.OnCredential = func(cred *trust.Credential) { renewed <- cred }
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, "partner", "issuer"); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		for _, a := range m.Audit() {
			if a.Kind == "renewal" && a.Sender == partner.ID().String() && a.Recipient == iss.ID().String() {
				if a.Decision != "reject" || a.Reason != string(trust.CodeUntrustedRoot) {
					return fmt.Errorf("renewal of B's credential by A's issuer: %s %s", a.Decision, a.Reason)
				}
				return nil
			}
		}
		return errors.New("no renewal request reached the issuer yet")
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-renewed:
		t.Fatalf("the partner got a credential of %s", c.Issuer)
	default:
	}
	if got := partner.Node.Credential().Issuer; !got.Equal(b.Public()) {
		t.Fatalf("the partner's credential is now from %s", got)
	}
	// A node that trusts only A does not admit it.
	if err := m.Connect(ctx, "partner", "verifier"); err == nil {
		t.Fatal("the verifier, which trusts only A, admitted B's agent")
	}
}

// The revocations a node keeps are bounded by Policy.MaxRevocations (past
// it a new one is refused as full rather than forgetting one that still
// matters) and forgotten once what they revoke has expired, which makes
// room again.
func TestStoredRevocationsAreBoundedAndPruned(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"a"}, simulations.Options{Configure: func(_ string, c *node.Config) {
		c.Policy.MaxRevocations = 4
		// Link revocations are kept at least the longest token lifetime
		// (plus the clock skew) from their issue: short ones here.
		c.Policy.MaxTokenLifetime, c.Policy.ClockSkew = time.Second, 0
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	n := m.Agents["a"].Node
	revoke := func(keep time.Duration) error {
		var id trust.LinkID
		_, _ = rand.Read(id[:])
		r, err := trust.RevokeLink(m.Anchor, id, time.Now(), keep)
		if err != nil {
			t.Fatal(err)
		}
		return n.Revoke(ctx, r.Bytes())
	}
	for i := range 4 {
		keep := time.Hour
		if i < 2 {
			keep = 2 * time.Second
		}
		if err := revoke(keep); err != nil {
			t.Fatal(err)
		}
	}
	if err := revoke(time.Hour); trust.CodeOf(err) != trust.CodeFull {
		t.Fatalf("a fifth revocation past the bound of 4: %v, want full", err)
	}
	if got := n.Stats().Revocations; got != 4 {
		t.Fatalf("the node holds %d revocations, want 4", got)
	}
	// The two short-lived ones expire and are forgotten.
	if err := simulations.WaitFor(10*time.Second, func() error {
		if got := n.Stats().Revocations; got != 2 {
			return fmt.Errorf("the node holds %d revocations, want 2", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := revoke(time.Hour); err != nil {
		t.Fatalf("a revocation once expired ones were forgotten: %v", err)
	}
}
