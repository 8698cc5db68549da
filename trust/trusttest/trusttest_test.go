package trusttest_test

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"

	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func seed(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

type world struct {
	anchor                     *trust.AnchorKey
	alice, bob, carol, mallory *trust.Identity
	root, toBob                *trust.Token // anchor -> alice -> bob
	v                          *trust.Verifier
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{}
	var err error
	if w.anchor, err = trust.GenerateAnchorKey(seed(1)); err != nil {
		t.Fatal(err)
	}
	ids := make([]*trust.Identity, 4)
	for i := range ids {
		if ids[i], err = trust.GenerateIdentity(seed(byte(2 + i))); err != nil {
			t.Fatal(err)
		}
	}
	w.alice, w.bob, w.carol, w.mallory = ids[0], ids[1], ids[2], ids[3]
	w.root, err = trust.IssueToken(w.anchor, w.alice.Public(), trust.Grant{
		Scopes: []string{"read:logs", "write:reports"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(2 * time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	w.toBob, err = w.root.Delegate(w.alice, w.bob.Public(), trust.Grant{
		Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if w.v, err = trust.NewVerifier(trust.DefaultPolicy(w.anchor.Public())); err != nil {
		t.Fatal(err)
	}
	return w
}

// What the helper makes is judged as the rules say: refused where it
// breaks one, at the forged link, and accepted where it breaks none.
func TestForgedTokensAreJudgedByTheRules(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	now := t0.Add(time.Minute)
	for _, c := range []struct {
		name   string
		signer *trust.Identity
		to     *trust.Identity
		g      trust.Grant
		action string
		code   trust.Code
	}{
		{"within the rules", w.bob, w.carol, trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(30 * time.Minute)}, "read:logs", ""},
		{"scope not granted", w.bob, w.carol, trust.Grant{Scopes: []string{"write:reports"}, Expires: t0.Add(30 * time.Minute)}, "write:reports", trust.CodeEscalation},
		{"later expiry", w.bob, w.carol, trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(48 * time.Hour)}, "read:logs", trust.CodeEscalation},
		{"signed by a non-holder", w.mallory, w.mallory, trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(30 * time.Minute)}, "read:logs", trust.CodeBadSignature},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			forged := trusttest.ForgeDelegation(w.toBob, c.signer, c.to.Public(), c.g, t0)
			p, err := trust.ParseToken(forged.Bytes(), trust.DefaultMaxTokenSize)
			if err != nil {
				t.Fatal(err)
			}
			v, err := trust.NewVerifier(trust.DefaultPolicy(w.anchor.Public()))
			if err != nil {
				t.Fatal(err)
			}
			err = v.Authorize(p, c.to.Public(), c.action, now)
			if trust.CodeOf(err) != c.code {
				t.Fatalf("want %q, got %v", c.code, err)
			}
			if e, ok := err.(*trust.Error); ok && e.Link != 2 {
				t.Fatalf("refused at link %d, want the forged link 2: %v", e.Link, err)
			}
			if p.Leaf().ID != forged.Leaf().ID {
				t.Fatalf("decoded link ID %s, made %s", p.Leaf().ID, forged.Leaf().ID)
			}
		})
	}
}

// TestTorsionSignature: the cofactored equation accepts it, crypto/ed25519
// and trust refuse it, and an honest signature of the same message passes
// all three.
func TestTorsionSignature(t *testing.T) {
	id, _ := trust.GenerateIdentity(seed(9))
	pub := id.Public()
	msg := []byte("envelope body")
	cofactored := &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}
	for range 4 {
		sig := trusttest.TorsionSignature(id, "domain:", msg)
		signed := append([]byte("domain:"), msg...)
		if !voi.VerifyWithOptions(pub[:], signed, sig, cofactored) {
			t.Fatal("the cofactored equation refuses it")
		}
		if ed25519.Verify(pub[:], signed, sig) || pub.Verify("domain:", msg, sig) {
			t.Fatal("crypto/ed25519 or trust accepts it")
		}
	}
	honest := id.Sign("domain:", msg)
	if !pub.Verify("domain:", msg, honest) || !voi.VerifyWithOptions(pub[:], append([]byte("domain:"), msg...), honest, cofactored) {
		t.Fatal("honest signature refused")
	}
}
