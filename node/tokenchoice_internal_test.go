package node

import (
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// choiceNode is a node (not started) whose clock the test moves.
func choiceNode(t testing.TB) (*Node, *trust.AnchorKey, *atomic.Int64) {
	t.Helper()
	a, _ := trust.GenerateAnchorKey(rand.Reader)
	id, _ := trust.GenerateIdentity(rand.Reader)
	cred, err := trust.IssueCredential(a, id.Public(), "me", time.Now().Add(-time.Minute), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := LocalConfig()
	cfg.Identity, cfg.Credential, cfg.Policy = id, cred, trust.DefaultPolicy(a.Public())
	cfg.Policy.ClockSkew = 0
	var off atomic.Int64
	cfg.Clock = func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n, a, &off
}

// tokenAt issues a read:logs token valid from nb to exp.
func tokenAt(t testing.TB, a *trust.AnchorKey, n *Node, nb, exp time.Time) *trust.Token {
	t.Helper()
	tok, err := trust.IssueToken(a, n.self, trust.Grant{Scopes: []string{"read:logs"}, NotBefore: nb, Expires: exp}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// The remembered choice is what Authorize over the held tokens gives,
// at every step: tokens added, a revocation, expiry, a not-yet-valid
// token becoming valid, the clock going back.
func TestTokenChoiceFollowsTokensRevocationsAndTime(t *testing.T) {
	n, a, off := choiceNode(t)
	// fresh is the choice made from scratch, as before the cache.
	fresh := func(action string) *trust.Token {
		for _, tok := range n.Tokens() {
			if n.verifier.Authorize(tok, n.self, action, n.now()) == nil {
				return tok
			}
		}
		return nil
	}
	check := func(step string, want *trust.Token) {
		t.Helper()
		for range 2 { // the second from the remembered choice
			got := n.tokenFor("read:logs")
			if got != want || got != fresh("read:logs") {
				t.Fatalf("%s: chose %p, want %p (fresh %p)", step, got, want, fresh("read:logs"))
			}
		}
	}
	now := time.Now().Truncate(time.Second)
	check("no tokens", nil)
	later := tokenAt(t, a, n, now.Add(time.Hour), now.Add(3*time.Hour)) // valid in an hour
	n.AddToken(later)
	check("only a token not valid yet", nil)
	short := tokenAt(t, a, n, now.Add(-time.Minute), now.Add(10*time.Minute))
	n.AddToken(short)
	check("AddToken", short)
	long := tokenAt(t, a, n, now.Add(-time.Minute), now.Add(2*time.Hour))
	n.AddToken(long)
	check("a second token: the first one held still wins", short)
	off.Store(int64(11 * time.Minute))
	check("the chosen token expired", long)
	off.Store(int64(61 * time.Minute))
	check("an earlier token became valid", later)
	off.Store(0)
	check("the clock went back", short)
	r, _ := trust.RevokeLink(a, short.Links[0].ID, time.Now(), trust.DefaultMaxTokenLife)
	if err := n.verifier.AddRevocation(r, n.now()); err != nil {
		t.Fatal(err)
	}
	check("the chosen token revoked", long)
	if n.tokenFor("read:*") != nil || n.tokenFor("write:reports") != nil {
		t.Fatal("a token chosen for an action none grants")
	}
}

// The remembered choices are bounded whatever actions callers name.
func TestTokenChoicesAreBounded(t *testing.T) {
	n, a, _ := choiceNode(t)
	now := time.Now()
	n.AddToken(tokenAt(t, a, n, now.Add(-time.Minute), now.Add(time.Hour)))
	for i := range 3 * maxTokenChoices {
		n.tokenFor("read:r" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)))
		if l := len(n.choice.choices); l > maxTokenChoices {
			t.Fatalf("%d choices held, bound %d", l, maxTokenChoices)
		}
	}
}

// BenchmarkTokenFor is the token choice of one call with three tokens
// held (the one granting the action last): remembered, and made afresh
// as before (Authorize over every held token, the link cache warm).
//
// go test ./node -run '^$' -bench TokenFor -benchtime 20000x
func BenchmarkTokenFor(b *testing.B) {
	for _, mode := range []string{"remembered", "authorize"} {
		b.Run(mode, func(b *testing.B) {
			n, a, _ := choiceNode(b)
			now := time.Now()
			for _, s := range []string{"write:reports", "read:metrics", "read:logs"} {
				tok, err := trust.IssueToken(a, n.self, trust.Grant{Scopes: []string{s}, NotBefore: now.Add(-time.Minute), Expires: now.Add(time.Hour)}, now)
				if err != nil {
					b.Fatal(err)
				}
				n.AddToken(tok)
			}
			choose := n.tokenFor
			if mode == "authorize" {
				choose = func(action string) *trust.Token { return n.chooseToken(n.Tokens(), action, n.now()).tok }
			}
			if choose("read:logs") == nil {
				b.Fatal("no token")
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if choose("read:logs") == nil {
					b.Fatal("no token")
				}
			}
		})
	}
}
