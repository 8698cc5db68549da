package trust_test

import (
	"bytes"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
)

// A forged link gets the ID a verifier derives, whoever signed it: the
// same as the holder's own link with that body would get, so revoking the
// ID names exactly that grant. (An external test: trusttest imports
// trust.) Not parallel: it fixes the process's crypto/rand stream, so
// that two forgeries carry the same nonce.
func TestForgedLinkIDIsDerived(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	seed := func(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }
	anchor, err := trust.GenerateAnchorKey(seed(20))
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := trust.GenerateIdentity(seed(21))
	bob, _ := trust.GenerateIdentity(seed(22))
	mallory, _ := trust.GenerateIdentity(seed(24))
	root, err := trust.IssueToken(anchor, alice.Public(), trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(2 * time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	toBob, err := root.Delegate(alice, bob.Public(), trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	g := trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(30 * time.Minute)}
	cryptotest.SetGlobalRandom(t, 3)
	byBob := trusttest.ForgeDelegation(toBob, bob, mallory.Public(), g, t0)
	cryptotest.SetGlobalRandom(t, 3)
	byMallory := trusttest.ForgeDelegation(toBob, mallory, mallory.Public(), g, t0)
	if byBob.Leaf().ID != byMallory.Leaf().ID {
		t.Fatalf("the same link has ID %s signed by its holder, %s signed by another", byBob.Leaf().ID, byMallory.Leaf().ID)
	}
	p, err := trust.ParseToken(byMallory.Bytes(), trust.DefaultMaxTokenSize)
	if err != nil {
		t.Fatal(err)
	}
	if p.Leaf().ID != byMallory.Leaf().ID {
		t.Fatalf("forged link: decoded ID %s, made %s", p.Leaf().ID, byMallory.Leaf().ID)
	}

	now := t0.Add(time.Minute)
	v, err := trust.NewVerifier(trust.DefaultPolicy(anchor.Public()))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Authorize(byBob, mallory.Public(), "read:logs", now); err != nil {
		t.Fatalf("the link its holder signed: %v", err)
	}
	r, err := trust.RevokeLink(anchor, byMallory.Leaf().ID, now, trust.DefaultMaxTokenLife)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.AddRevocation(r, now); err != nil {
		t.Fatal(err)
	}
	err = v.Authorize(byBob, mallory.Public(), "read:logs", now)
	if e, ok := err.(*trust.Error); !ok || e.Code != trust.CodeRevoked || e.Link != 2 {
		t.Fatalf("after revoking the forged link's ID: want revoked at link 2, got %v", err)
	}
	if err := v.Authorize(toBob, bob.Public(), "read:logs", now); err != nil {
		t.Fatalf("the chain it extends: %v", err)
	}
}
