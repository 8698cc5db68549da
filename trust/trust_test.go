package trust

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func seed(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

func testIdentity(t testing.TB, b byte) *Identity {
	t.Helper()
	id, err := GenerateIdentity(seed(b))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func testAnchor(t testing.TB, b byte) *AnchorKey {
	t.Helper()
	a, err := GenerateAnchorKey(seed(b))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func testVerifier(t testing.TB, anchors ...PublicKey) *Verifier {
	t.Helper()
	v, err := NewVerifier(DefaultPolicy(anchors...))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantCode(t *testing.T, err error, code Code) {
	t.Helper()
	if code == "" {
		if err != nil {
			t.Fatalf("want success, got %v", err)
		}
		return
	}
	if CodeOf(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

func TestPeerIDMatchesLibp2p(t *testing.T) {
	t.Parallel()
	id := testIdentity(t, 1)
	want, err := peer.IDFromPrivateKey(id.Libp2pKey())
	if err != nil {
		t.Fatal(err)
	}
	if id.PeerID() != want {
		t.Fatalf("peer ID %s, libp2p says %s", id.PeerID(), want)
	}
	k, err := ParsePublicKey(want.String())
	if err != nil || !k.Equal(id.Public()) {
		t.Fatalf("ParsePublicKey round trip: %v", err)
	}
	// Pinned vector: the key from seed 0x01 must keep its ID forever.
	if got := id.PeerID().String(); got != "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5" {
		t.Fatalf("pinned peer ID changed: %s", got)
	}
	if _, err := ParsePublicKey("not-a-peer-id"); CodeOf(err) != CodeMalformed {
		t.Fatalf("want malformed, got %v", err)
	}
	// An RSA/ECDSA peer ID is refused: meshagent needs keys inline.
	ek, _, _ := crypto.GenerateECDSAKeyPair(seed(9))
	eid, _ := peer.IDFromPrivateKey(ek)
	if _, err := PublicKeyFromPeerID(eid); CodeOf(err) != CodeMalformed {
		t.Fatalf("want malformed for ECDSA ID, got %v", err)
	}
}

func TestKeyFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	id := testIdentity(t, 2)
	p := filepath.Join(dir, "identity.key")
	if err := id.Save(p); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 600", st.Mode().Perm())
	}
	got, err := LoadIdentity(p)
	if err != nil || !got.Public().Equal(id.Public()) {
		t.Fatalf("load: %v", err)
	}
	if err := id.Save(p); err == nil {
		t.Fatal("Save overwrote an existing key file")
	}
	if _, err := LoadAnchorKey(p); err == nil || !strings.Contains(err.Error(), "ANCHOR") {
		t.Fatalf("identity file loaded as anchor key: %v", err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(p); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("want ErrKeyPermissions, got %v", err)
	}
	a := testAnchor(t, 3)
	ap := filepath.Join(dir, "anchor.key")
	if err := a.Save(ap); err != nil {
		t.Fatal(err)
	}
	if ga, err := LoadAnchorKey(ap); err != nil || ga.Public() != a.Public() {
		t.Fatalf("anchor load: %v", err)
	}
}

func TestScopes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s    string
		code Code
	}{
		{"read:logs", ""}, {"write:reports", ""}, {"exec:job-42.v2", ""}, {"a:b", ""},
		{"*", CodeWildcard}, {"read:*", CodeWildcard}, {"*:logs", CodeWildcard}, {"read:log?", CodeWildcard},
		{"", CodeMalformed}, {"read", CodeMalformed}, {"read:", CodeMalformed}, {":logs", CodeMalformed},
		{"read:logs:x", CodeMalformed}, {"Read:logs", CodeMalformed}, {"read:lo gs", CodeMalformed},
		{"read:-logs", CodeMalformed}, {"read:" + strings.Repeat("a", 32), CodeMalformed}, {"read:logs/x", CodeMalformed},
	} {
		if err := ValidateScope(c.s); CodeOf(err) != c.code {
			t.Errorf("ValidateScope(%q) = %v, want %q", c.s, err, c.code)
		}
	}
}

func TestCredential(t *testing.T) {
	t.Parallel()
	a, other := testAnchor(t, 10), testAnchor(t, 11)
	agent := testIdentity(t, 12)
	v := testVerifier(t, a.Public())
	c, err := IssueCredential(a, agent.Public(), "orchestrator", t0, DefaultCredentialTTL)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseCredential(c.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(parsed.Bytes(), c.Bytes()) || parsed.Name != "orchestrator" || parsed.Subject != agent.Public() {
		t.Fatal("credential round trip changed it")
	}
	wantCode(t, v.VerifyCredential(parsed, t0.Add(time.Hour)), "")
	wantCode(t, v.VerifyCredential(parsed, t0.Add(-10*time.Second)), "") // inside the skew
	wantCode(t, v.VerifyCredential(parsed, t0.Add(-time.Minute)), CodeNotYetValid)
	wantCode(t, v.VerifyCredential(parsed, t0.Add(24*time.Hour+10*time.Second)), "") // inside the skew
	wantCode(t, v.VerifyCredential(parsed, t0.Add(25*time.Hour)), CodeExpired)

	foreign, _ := IssueCredential(other, agent.Public(), "orchestrator", t0, time.Hour)
	wantCode(t, v.VerifyCredential(foreign, t0), CodeUntrustedRoot)

	long, _ := IssueCredential(a, agent.Public(), "x", t0, 30*24*time.Hour)
	wantCode(t, v.VerifyCredential(long, t0), CodeLifetime)

	// Altered: another name in the body, same signature.
	forged := *parsed
	other2, _ := IssueCredential(a, testIdentity(t, 13).Public(), "orchestrator", t0, time.Hour)
	forged.body = other2.body
	wantCode(t, v.VerifyCredential(&forged, t0), CodeBadSignature)

	if _, err := IssueCredential(a, agent.Public(), "bad name", t0, time.Hour); CodeOf(err) != CodeMalformed {
		t.Fatalf("bad name accepted: %v", err)
	}
	if _, err := ParseCredential(bytes.Repeat([]byte{1}, MaxCredentialSize+1)); CodeOf(err) != CodeTooLarge {
		t.Fatalf("want too_large, got %v", err)
	}
	if _, err := ParseCredential([]byte("garbage")); CodeOf(err) != CodeMalformed {
		t.Fatalf("want malformed, got %v", err)
	}

	// Revocation by serial and by agent.
	r, _ := RevokeCredential(a, c.Serial, t0, DefaultMaxTokenLife)
	v2 := testVerifier(t, a.Public())
	wantCode(t, v2.AddRevocation(r, t0), "")
	wantCode(t, v2.VerifyCredential(parsed, t0.Add(time.Minute)), CodeRevoked)
	ra, _ := RevokeAgent(a, agent.Public(), t0.Add(time.Second), t0, DefaultMaxTokenLife)
	v3 := testVerifier(t, a.Public())
	wantCode(t, v3.AddRevocation(ra, t0), "")
	wantCode(t, v3.VerifyCredential(parsed, t0.Add(time.Minute)), CodeRevoked)
	// A credential issued after the compromise time is not affected.
	fresh, _ := IssueCredential(a, agent.Public(), "orchestrator", t0.Add(time.Minute), time.Hour)
	wantCode(t, v3.VerifyCredential(fresh, t0.Add(2*time.Minute)), "")
}

// chain builds anchor -> alice -> bob -> carol with narrowing grants.
type fixture struct {
	anchor             *AnchorKey
	alice, bob, carol  *Identity
	mallory            *Identity
	root, toBob, toCar *Token
	v                  *Verifier
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{anchor: testAnchor(t, 20), alice: testIdentity(t, 21), bob: testIdentity(t, 22), carol: testIdentity(t, 23), mallory: testIdentity(t, 24)}
	f.v = testVerifier(t, f.anchor.Public())
	var err error
	f.root, err = IssueToken(f.anchor, f.alice.Public(), Grant{
		Scopes: []string{"read:logs", "write:reports", "read:metrics"}, Delegatable: []string{"read:logs", "read:metrics"},
		Expires: t0.Add(2 * time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	f.toBob, err = f.root.Delegate(f.alice, f.bob.Public(), Grant{Scopes: []string{"read:logs", "read:metrics"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	f.toCar, err = f.toBob.Delegate(f.bob, f.carol.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(30 * time.Minute)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTokenHappyPath(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	wantCode(t, f.v.Authorize(f.root, f.alice.Public(), "write:reports", now), "")
	wantCode(t, f.v.Authorize(f.toBob, f.bob.Public(), "read:metrics", now), "")
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", now), "")
	// Encoded form round-trips byte for byte.
	p, err := ParseToken(f.toCar.Bytes(), DefaultMaxTokenSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Bytes(), f.toCar.Bytes()) {
		t.Fatal("token re-encoding differs")
	}
	wantCode(t, f.v.Authorize(p, f.carol.Public(), "read:logs", now), "")
	info := p.Info()
	if len(info.Links) != 3 || info.Holder != f.carol.PeerID().String() {
		t.Fatalf("info: %+v", info)
	}
}

func TestDelegateRefusesWidening(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, c := range []struct {
		name   string
		g      Grant
		code   Code
		detail string
	}{
		{"scope not delegatable", Grant{Scopes: []string{"write:reports"}, Expires: t0.Add(time.Hour)}, CodeEscalation, "not delegatable"},
		{"scope not held", Grant{Scopes: []string{"delete:logs"}, Expires: t0.Add(time.Hour)}, CodeEscalation, "not granted"},
		{"delegatable not own", Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:metrics"}, Expires: t0.Add(time.Hour)}, CodeEscalation, "not among"},
		{"later expiry", Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(3 * time.Hour)}, CodeEscalation, "expiry"},
		{"earlier not-before", Grant{Scopes: []string{"read:logs"}, NotBefore: t0.Add(-time.Hour), Expires: t0.Add(time.Hour)}, CodeEscalation, "not-before"},
		{"wildcard", Grant{Scopes: []string{"read:*"}, Expires: t0.Add(time.Hour)}, CodeWildcard, ""},
		{"star", Grant{Scopes: []string{"*"}, Expires: t0.Add(time.Hour)}, CodeWildcard, ""},
		{"empty", Grant{Scopes: nil, Expires: t0.Add(time.Hour)}, CodeMalformed, ""},
		{"expired at birth", Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(-time.Hour)}, CodeMalformed, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := f.root.Delegate(f.alice, f.bob.Public(), c.g, t0)
			wantCode(t, err, c.code)
			if !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("error %q does not say %q", err, c.detail)
			}
		})
	}
	if _, err := f.root.Delegate(f.mallory, f.mallory.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0); CodeOf(err) != CodeNotHolder {
		t.Fatalf("non-holder delegated: %v", err)
	}
	if _, err := IssueToken(f.anchor, f.alice.Public(), Grant{Scopes: []string{"read:logs", "*"}, Expires: t0.Add(time.Hour)}, t0); CodeOf(err) != CodeWildcard {
		t.Fatalf("wildcard issued: %v", err)
	}
	// Depth limit at creation.
	tok, holder := f.root, f.alice
	for i := 1; i < DefaultMaxDepth; i++ {
		next := testIdentity(t, byte(100+i))
		var err error
		tok, err = tok.Delegate(holder, next.Public(), Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
		if err != nil {
			t.Fatalf("depth %d: %v", i+1, err)
		}
		holder = next
	}
	if _, err := tok.Delegate(holder, f.bob.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0); CodeOf(err) != CodeTooDeep {
		t.Fatalf("want too_deep, got %v", err)
	}
	wantCode(t, f.v.Authorize(tok, holder.Public(), "read:logs", t0), "")
}

// craft appends a link without any of Delegate's checks, signed by signer:
// what an attacker with a valid token (or none) can build by hand.
func craft(t *testing.T, tok *Token, signer func([]byte) []byte, to PublicKey, g Grant, mask uint64) *Token {
	t.Helper()
	l, err := newLink(to, Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	l.Scopes, l.Delegatable = g.Scopes, maskScopes(g.Scopes, mask)
	l.NotBefore, l.Expires = g.NotBefore, g.Expires
	body := encodeLinkBody(l, mask)
	l.body = body
	l.ID = deriveLinkID(tok.Leaf().Holder, tok.chainHash(), body)
	l.sig = signer(linkMessage(tok.chainHash(), body))
	return &Token{Anchor: tok.Anchor, Links: append(append([]*Link(nil), tok.Links...), l)}
}

func TestVerifyRejectsHandCraftedChains(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	bobSigns := func(m []byte) []byte { return f.bob.Sign(DomainLink, m) }
	mallorySigns := func(m []byte) []byte { return f.mallory.Sign(DomainLink, m) }
	for _, c := range []struct {
		name string
		tok  *Token
		code Code
		link int
	}{
		{"escalated scope", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"write:reports"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0), CodeEscalation, 2},
		{"non-delegatable scope", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"read:metrics"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0), CodeEscalation, 2},
		{"later expiry", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"read:logs"}, NotBefore: t0, Expires: t0.Add(5 * time.Hour)}, 0), CodeEscalation, 2},
		{"earlier not-before", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"read:logs"}, NotBefore: t0.Add(-time.Hour), Expires: t0.Add(time.Hour)}, 0), CodeEscalation, 2},
		{"wider delegatable", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"read:logs"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0b11), CodeMalformed, 2},
		{"wildcard", craft(t, f.toBob, bobSigns, f.carol.Public(), Grant{Scopes: []string{"read:*"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0), CodeWildcard, 2},
		{"signed by non-holder", craft(t, f.toBob, mallorySigns, f.mallory.Public(), Grant{Scopes: []string{"read:logs"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0), CodeBadSignature, 2},
	} {
		// Serial: the cases share f.v and its cache of verified links.
		t.Run(c.name, func(t *testing.T) {
			// Through the wire, as an attacker would send it.
			p, err := ParseToken(c.tok.Bytes(), DefaultMaxTokenSize)
			if err != nil {
				wantCode(t, err, c.code)
				return
			}
			err = f.v.VerifyChain(p, now)
			wantCode(t, err, c.code)
			if e := err.(*Error); e.Link != c.link {
				t.Fatalf("failing link %d, want %d (%v)", e.Link, c.link, err)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	// Forged root: mallory's own "anchor".
	fake := &AnchorKey{kp: f.mallory.kp}
	forgedRoot, _ := IssueToken(fake, f.mallory.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	wantCode(t, f.v.Authorize(forgedRoot, f.mallory.Public(), "read:logs", now), CodeUntrustedRoot)
	// Root claiming the real anchor but signed by mallory.
	claim := &Token{Anchor: f.anchor.Public(), Links: forgedRoot.Links}
	wantCode(t, f.v.Authorize(claim, f.mallory.Public(), "read:logs", now), CodeBadSignature)
	// Splice: carol's leaf link moved onto another chain of bob's.
	other, _ := f.root.Delegate(f.alice, f.bob.Public(), Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	spliced := &Token{Anchor: f.anchor.Public(), Links: []*Link{other.Links[0], other.Links[1], f.toCar.Links[2]}}
	wantCode(t, f.v.Authorize(spliced, f.carol.Public(), "read:logs", now), CodeBadSignature)
	// Wrong holder, scope not granted, invalid action.
	wantCode(t, f.v.Authorize(f.toCar, f.mallory.Public(), "read:logs", now), CodeNotHolder)
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "write:reports", now), CodeScopeNotGranted)
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:*", now), CodeWildcard)
	// Time.
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", t0.Add(-time.Hour)), CodeNotYetValid)
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", t0.Add(31*time.Minute)), CodeExpired)
	// Depth limit at verification.
	p := DefaultPolicy(f.anchor.Public())
	p.MaxDepth = 2
	shallow, _ := NewVerifier(p)
	wantCode(t, shallow.Authorize(f.toCar, f.carol.Public(), "read:logs", now), CodeTooDeep)
	// Too large and garbage.
	if _, err := ParseToken(f.toCar.Bytes(), 100); CodeOf(err) != CodeTooLarge {
		t.Fatalf("want too_large, got %v", err)
	}
	for _, g := range [][]byte{nil, {0xff}, []byte("garbage garbage"), bytes.Repeat([]byte{0x0a, 0x01}, 50)} {
		if _, err := ParseToken(g, DefaultMaxTokenSize); CodeOf(err) != CodeMalformed {
			t.Fatalf("ParseToken(%x) = %v, want malformed", g, err)
		}
	}
	// Lifetime limit.
	long, _ := IssueToken(f.anchor, f.alice.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(60 * 24 * time.Hour)}, t0)
	wantCode(t, f.v.Authorize(long, f.alice.Public(), "read:logs", now), CodeLifetime)
}

func TestCacheNeverSkipsTimeOrRevocation(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", now), "")
	if f.v.cache.ll.Len() != 3 {
		t.Fatalf("cache holds %d links, want 3", f.v.cache.ll.Len())
	}
	wantCode(t, f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", t0.Add(time.Hour)), CodeExpired)
	r, _ := RevokeLink(f.anchor, f.toBob.Links[1].ID, now, DefaultMaxTokenLife)
	wantCode(t, f.v.AddRevocation(r, now), "")
	err := f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", now)
	wantCode(t, err, CodeRevoked)
	if err.(*Error).Link != 1 {
		t.Fatalf("revoked link index: %v", err)
	}
}

func TestRevocations(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	// Bob's key is compromised: everything he holds or issued before now.
	r, err := RevokeAgent(f.anchor, f.bob.Public(), now, now, DefaultMaxTokenLife)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := ParseRevocation(r.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, f.v.AddRevocation(pr, now), "")
	err = f.v.Authorize(f.toBob, f.bob.Public(), "read:logs", now)
	wantCode(t, err, CodeRevoked)
	err = f.v.Authorize(f.toCar, f.carol.Public(), "read:logs", now)
	wantCode(t, err, CodeRevoked) // issued by bob
	wantCode(t, f.v.Authorize(f.root, f.alice.Public(), "read:logs", now), "")

	// Only anchors may revoke.
	fake := &AnchorKey{kp: f.mallory.kp}
	mr, _ := RevokeAgent(fake, f.alice.Public(), now, now, time.Hour)
	wantCode(t, f.v.AddRevocation(mr, now), CodeUntrustedRoot)
	tampered := *pr
	tampered.body = mr.body
	tampered.Issuer = f.anchor.Public()
	wantCode(t, f.v.AddRevocation(&tampered, now), CodeBadSignature)

	// Bounded: the set refuses rather than forgets, then frees expired records.
	p := DefaultPolicy(f.anchor.Public())
	p.MaxRevocations = 2
	p.MaxTokenLifetime, p.ClockSkew = time.Hour, 0 // revocations of links are kept at least this long
	v, _ := NewVerifier(p)
	for i := 0; i < 2; i++ {
		x, _ := RevokeLink(f.anchor, LinkID{byte(i + 1)}, now, time.Hour)
		wantCode(t, v.AddRevocation(x, now), "")
	}
	x, _ := RevokeLink(f.anchor, LinkID{9}, now, time.Hour)
	wantCode(t, v.AddRevocation(x, now), CodeFull)
	x2, _ := RevokeLink(f.anchor, LinkID{9}, now, 3*time.Hour)
	wantCode(t, v.AddRevocation(x2, now.Add(2*time.Hour)), "")
	if v.Revocations() != 1 {
		t.Fatalf("want 1 record after pruning, have %d", v.Revocations())
	}
	if _, err := ParseRevocation([]byte("junk")); CodeOf(err) != CodeMalformed {
		t.Fatalf("want malformed, got %v", err)
	}
}

// A revocation signed with a keep shorter than the longest lifetime the
// policy accepts (an operator mistake: --keep 1h) is still kept until what
// it revokes has expired: the refusal does not lapse into acceptance.
func TestShortKeepDoesNotLapse(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	long, err := IssueToken(f.anchor, f.alice.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(20 * 24 * time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := RevokeLink(f.anchor, long.Links[0].ID, now, time.Hour)
	wantCode(t, f.v.AddRevocation(r, now), "")
	later := now.Add(10 * 24 * time.Hour)
	f.v.PruneRevocations(later)
	wantCode(t, f.v.Authorize(long, f.alice.Public(), "read:logs", later), CodeRevoked)
	if got, want := f.v.KeepUntil(r), now.Add(DefaultMaxTokenLife+30*time.Second); !got.Equal(want.Truncate(time.Second)) && !got.Equal(want) {
		t.Fatalf("kept until %s, want %s", got, want)
	}
}
