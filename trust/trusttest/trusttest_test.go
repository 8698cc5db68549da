package trusttest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"testing/cryptotest"
	"time"

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

func scopes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("read:s%d", i)
	}
	return out
}

// The helper makes, byte for byte, what Token.ForgeDelegation makes from
// the same inputs and the same random nonce. Not parallel: it fixes the
// process's crypto/rand stream.
func TestForgeDelegationMatchesTheMethod(t *testing.T) {
	w := newWorld(t)
	zone := time.FixedZone("UTC+5:30", 5*3600+1800)
	before1970 := time.Date(1969, 12, 31, 23, 59, 58, 500_000_000, time.UTC)
	for _, c := range []struct {
		name    string
		tok     *trust.Token
		signer  *trust.Identity
		to      trust.PublicKey
		g       trust.Grant
		now     time.Time
		decodes bool
	}{
		{"within the rules", w.toBob, w.bob, w.carol.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(30 * time.Minute)}, t0, true},
		{"signed by a non-holder", w.toBob, w.mallory, w.mallory.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Minute)}, t0, true},
		{"widened scopes and expiry", w.toBob, w.bob, w.mallory.Public(), trust.Grant{Scopes: []string{"write:reports", "read:*"},
			Delegatable: []string{"read:*", "not:listed", "write:reports"}, Expires: t0.Add(48 * time.Hour)}, t0, true},
		{"on link 0", w.root, w.alice, w.bob.Public(), trust.Grant{Scopes: []string{"write:reports"}, Expires: t0.Add(time.Hour)}, t0, true},
		{"sub-second times in another zone", w.root, w.alice, w.bob.Public(), trust.Grant{Scopes: []string{"read:logs"},
			NotBefore: t0.Add(1500 * time.Millisecond).In(zone), Expires: t0.Add(time.Hour + 999*time.Millisecond).In(zone)}, t0.Add(123 * time.Millisecond), true},
		{"not-before of now", w.toBob, w.bob, w.carol.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0.Add(2700 * time.Millisecond).In(zone), true},
		{"before 1970", w.toBob, w.bob, w.carol.Public(), trust.Grant{Scopes: []string{"read:logs"}, NotBefore: before1970, Expires: before1970.Add(time.Second)}, t0, true},
		{"no scopes, no expiry", w.toBob, w.bob, w.carol.Public(), trust.Grant{}, t0, true},
		{"small-order holder", w.toBob, w.bob, trust.PublicKey{1}, trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0, false},
		{"more scopes than a link may have", w.toBob, w.bob, w.carol.Public(), trust.Grant{Scopes: scopes(trust.MaxScopes + 1), Delegatable: scopes(trust.MaxScopes + 1), Expires: t0.Add(time.Hour)}, t0, false},
		{"more delegatable scopes than the mask has bits", w.toBob, w.bob, w.carol.Public(), trust.Grant{Scopes: scopes(70), Delegatable: scopes(70), Expires: t0.Add(time.Hour)}, t0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := c.tok.Bytes()
			cryptotest.SetGlobalRandom(t, 7)
			//lint:ignore SA1019 the method this helper replaces is its reference until it is removed
			want := c.tok.ForgeDelegation(c.signer, c.to, c.g, c.now)
			cryptotest.SetGlobalRandom(t, 7)
			got := trusttest.ForgeDelegationBytes(c.tok, c.signer, c.to, c.g, c.now)
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("ForgeDelegationBytes\n%x\nthe method\n%x", got, want.Bytes())
			}
			cryptotest.SetGlobalRandom(t, 7)
			if !c.decodes {
				defer func() {
					if recover() == nil {
						t.Fatal("ForgeDelegation did not panic on a token that does not decode")
					}
				}()
			}
			tok := trusttest.ForgeDelegation(c.tok, c.signer, c.to, c.g, c.now)
			if !c.decodes {
				return
			}
			if !bytes.Equal(tok.Bytes(), want.Bytes()) {
				t.Fatalf("ForgeDelegation\n%x\nthe method\n%x", tok.Bytes(), want.Bytes())
			}
			if tok.Leaf().ID != want.Leaf().ID {
				t.Fatalf("link ID %s, the method's %s", tok.Leaf().ID, want.Leaf().ID)
			}
			gi, _ := json.Marshal(tok.Info())
			wi, _ := json.Marshal(want.Info())
			if !bytes.Equal(gi, wi) {
				t.Fatalf("info %s, the method's %s", gi, wi)
			}
			if !bytes.Equal(c.tok.Bytes(), before) {
				t.Fatal("the token forged from was modified")
			}
		})
	}
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
