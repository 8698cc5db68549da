package trust

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

// cachedVerifier returns a verifier with the chain cache and one without
// any cache, for the same anchor: the second is the reference.
func cachedVerifier(t *testing.T, a *AnchorKey, size int) (cached, plain *Verifier) {
	t.Helper()
	p := DefaultPolicy(a.Public())
	p.ChainCacheSize = size
	cached, err := NewVerifier(p)
	if err != nil {
		t.Fatal(err)
	}
	p.ChainCacheSize, p.CacheSize = 0, 0
	if plain, err = NewVerifier(p); err != nil {
		t.Fatal(err)
	}
	return cached, plain
}

// decideBoth decodes raw with both verifiers and authorizes it, and fails
// the test unless both give the same verdict, code, link and detail.
func decideBoth(t *testing.T, cached, plain *Verifier, raw []byte, sender PublicKey, action string, now time.Time) error {
	t.Helper()
	auth := func(v *Verifier) error {
		tok, err := v.DecodeToken(raw)
		if err != nil {
			return err
		}
		return v.Authorize(tok, sender, action, now)
	}
	got, want := auth(cached), auth(plain)
	if (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
		t.Fatalf("cached verifier: %v; uncached: %v", got, want)
	}
	return got
}

func TestChainCacheHit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	v, plain := cachedVerifier(t, f.anchor, 16)
	raw, now := f.toCar.Bytes(), t0.Add(time.Minute)
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), "")
	if v.ChainCacheLen() != 1 {
		t.Fatalf("cache holds %d chains, want 1", v.ChainCacheLen())
	}
	a, _ := v.DecodeToken(raw)
	b, _ := v.DecodeToken(append([]byte(nil), raw...))
	if a != b || a.entry == nil || !a.entry.verified {
		t.Fatal("the same bytes did not come from the cache")
	}
	// What is checked on every use still is.
	wantCode(t, decideBoth(t, v, plain, raw, f.bob.Public(), "read:logs", now), CodeNotHolder)
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:metrics", now), CodeScopeNotGranted)
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:*", now), CodeWildcard)
	// A chain refused is not cached.
	wantCode(t, decideBoth(t, v, plain, f.toBob.Bytes(), f.carol.Public(), "read:logs", now), CodeNotHolder)
	if v.ChainCacheLen() != 1 {
		t.Fatalf("a refused chain was cached: %d", v.ChainCacheLen())
	}
	// Nor is a token that did not come from DecodeToken.
	wantCode(t, v.Authorize(f.toBob, f.bob.Public(), "read:logs", now), "")
	if v.ChainCacheLen() != 1 {
		t.Fatalf("a token not decoded by the verifier was cached: %d", v.ChainCacheLen())
	}
}

func TestChainCacheRefusesExpiredAndNotYetValid(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	v, plain := cachedVerifier(t, f.anchor, 16)
	raw := f.toCar.Bytes()
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", t0.Add(time.Minute)), "")
	skew := v.Policy().ClockSkew
	// The leaf expires at t0+30m, its parent at t0+1h: the first link out
	// of its window is named, as without the cache.
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", t0.Add(30*time.Minute+skew)), CodeExpired)
	err := decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", t0.Add(time.Hour+skew))
	wantCode(t, err, CodeExpired)
	if err.(*Error).Link != 1 {
		t.Fatalf("link named: %v", err)
	}
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", t0.Add(-skew-time.Second)), CodeNotYetValid)
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", t0.Add(30*time.Minute+skew-time.Second)), "")
}

func TestChainCacheRevocationTakesEffectAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	cases := map[string]func() *Revocation{
		"link": func() *Revocation {
			r, _ := RevokeLink(f.anchor, f.toCar.Links[1].ID, now, DefaultMaxTokenLife)
			return r
		},
		"leaf": func() *Revocation {
			r, _ := RevokeLink(f.anchor, f.toCar.Links[2].ID, now, DefaultMaxTokenLife)
			return r
		},
		"holder": func() *Revocation {
			r, _ := RevokeAgent(f.anchor, f.carol.Public(), now, now, DefaultMaxTokenLife)
			return r
		},
		"issuer": func() *Revocation {
			r, _ := RevokeAgent(f.anchor, f.bob.Public(), now, now, DefaultMaxTokenLife)
			return r
		},
	}
	for name, rev := range cases {
		t.Run(name, func(t *testing.T) {
			v, plain := cachedVerifier(t, f.anchor, 16)
			raw := f.toCar.Bytes()
			for range 3 {
				wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), "")
			}
			// An unrelated revocation moves the generation: the chain is
			// re-checked, still passes, and stays cached.
			unrelated, _ := IssueToken(f.anchor, f.mallory.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
			other, _ := RevokeLink(f.anchor, unrelated.Links[0].ID, now, DefaultMaxTokenLife)
			wantCode(t, v.AddRevocation(other, now), "")
			wantCode(t, plain.AddRevocation(other, now), "")
			wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), "")
			if v.ChainCacheLen() != 1 {
				t.Fatal("chain not cached")
			}
			r := rev()
			wantCode(t, v.AddRevocation(r, now), "")
			wantCode(t, plain.AddRevocation(r, now), "")
			wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), CodeRevoked)
			wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), CodeRevoked)
			if v.ChainCacheLen() != 0 {
				t.Fatal("a revoked chain stayed cached")
			}
		})
	}
}

// An agent revocation whose Before moves later revokes more: it must move
// the generation too.
func TestChainCacheAgentRevocationMovedLater(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	v, plain := cachedVerifier(t, f.anchor, 16)
	now := t0.Add(time.Minute)
	early, _ := RevokeAgent(f.anchor, f.carol.Public(), t0.Add(-time.Hour), now, DefaultMaxTokenLife)
	for _, x := range []*Verifier{v, plain} {
		wantCode(t, x.AddRevocation(early, now), "")
	}
	raw := f.toCar.Bytes()
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), "")
	g := v.Generation()
	later, _ := RevokeAgent(f.anchor, f.carol.Public(), now, now, DefaultMaxTokenLife)
	for _, x := range []*Verifier{v, plain} {
		wantCode(t, x.AddRevocation(later, now), "")
	}
	if v.Generation() == g {
		t.Fatal("generation did not move")
	}
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), CodeRevoked)
}

func TestChainCacheMissesOnAnyChangedByte(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	v, plain := cachedVerifier(t, f.anchor, 16)
	raw, now := f.toCar.Bytes(), t0.Add(time.Minute)
	wantCode(t, decideBoth(t, v, plain, raw, f.carol.Public(), "read:logs", now), "")
	cached, _ := v.DecodeToken(raw)
	for i := range raw {
		for _, x := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), raw...)
			bad[i] ^= x
			tok, err := v.DecodeToken(bad)
			if err != nil {
				continue
			}
			if tok == cached {
				t.Fatalf("byte %d changed, cache hit", i)
			}
			if err := decideBoth(t, v, plain, bad, f.carol.Public(), "read:logs", now); err == nil {
				t.Fatalf("byte %d ^ %#x: accepted", i, x)
			}
		}
	}
	if v.ChainCacheLen() != 1 {
		t.Fatalf("cache holds %d chains, want 1", v.ChainCacheLen())
	}
}

func TestChainCacheBoundedUnderFlood(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	const size = 64
	v, _ := cachedVerifier(t, f.anchor, size)
	now := t0.Add(time.Minute)
	honest := f.toCar.Bytes()
	auth := func(raw []byte, who *Identity) {
		t.Helper()
		tok, err := v.DecodeToken(raw)
		if err == nil {
			err = v.Authorize(tok, who.Public(), "read:logs", now)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	auth(honest, f.carol)
	// Alice may delegate read:logs: she mints as many distinct valid
	// chains to herself as she likes.
	g := Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}
	for i := 0; i < 4*size; i++ {
		tok, err := f.root.Delegate(f.alice, f.alice.Public(), g, t0)
		if err != nil {
			t.Fatal(err)
		}
		auth(tok.Bytes(), f.alice)
		if n := v.ChainCacheLen(); n > size {
			t.Fatalf("cache holds %d chains, bound %d", n, size)
		}
	}
	if n := v.chains.holders[f.alice.Public()].Len(); n != chainsPerHolder {
		t.Fatalf("the flooder holds %d entries, want %d", n, chainsPerHolder)
	}
	if tok, _ := v.DecodeToken(honest); tok.entry == nil || !tok.entry.verified {
		t.Fatal("the flood of one holder pushed out another's chain")
	}
	// Many holders: the global bound holds.
	for i := 0; i < 2*size; i++ {
		id := testIdentity(t, byte(100+i))
		tok, err := f.root.Delegate(f.alice, id.Public(), g, t0)
		if err != nil {
			t.Fatal(err)
		}
		auth(tok.Bytes(), id)
	}
	if n := v.ChainCacheLen(); n != size {
		t.Fatalf("cache holds %d chains, want its bound %d", n, size)
	}
	if len(v.chains.m) != size || len(v.chains.holders) > size {
		t.Fatalf("index sizes %d and %d", len(v.chains.m), len(v.chains.holders))
	}
}

func TestChainCacheOff(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, plain := cachedVerifier(t, f.anchor, 1)
	tok, err := plain.DecodeToken(f.toCar.Bytes())
	if err != nil || tok.entry != nil {
		t.Fatalf("%v %v", tok, err)
	}
	if _, err := plain.DecodeToken(make([]byte, plain.Policy().MaxTokenSize+1)); !errors.Is(err, &Error{Code: CodeTooLarge}) {
		t.Fatalf("oversized: %v", err)
	}
	v, _ := cachedVerifier(t, f.anchor, 1)
	if _, err := v.DecodeToken(make([]byte, v.Policy().MaxTokenSize+1)); !errors.Is(err, &Error{Code: CodeTooLarge}) {
		t.Fatalf("oversized: %v", err)
	}
}

// TestChainCacheEntrySize measures what one cached chain holds: the
// figure behind Policy.ChainCacheSize's doc (go test -run EntrySize -v).
func TestChainCacheEntrySize(t *testing.T) {
	a := testAnchor(t, 1)
	for _, depth := range []int{1, 5, 8} {
		v, _ := cachedVerifier(t, a, 4096)
		ids := make([]*Identity, depth)
		for i := range ids {
			ids[i] = testIdentity(t, byte(40+i))
		}
		// Four scopes of 31 characters: near the largest link a real grant makes.
		scopes := []string{"read:" + strings.Repeat("a", 26), "read:" + strings.Repeat("b", 26), "read:" + strings.Repeat("c", 26), "read:" + strings.Repeat("d", 26)}
		g := Grant{Scopes: scopes, Delegatable: scopes, Expires: t0.Add(time.Hour)}
		const n = 256 // each to its own leaf holder: one holder keeps at most 32
		raws, leaves := make([][]byte, n), make([]*Identity, n)
		for j := range raws {
			leaves[j] = testIdentity(t, byte(j))
			holder := func(i int) PublicKey {
				if i == depth-1 {
					return leaves[j].Public()
				}
				return ids[i].Public()
			}
			tok, err := IssueToken(a, holder(0), g, t0)
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i < depth; i++ {
				if tok, err = tok.Delegate(ids[i-1], holder(i), g, t0); err != nil {
					t.Fatal(err)
				}
			}
			raws[j] = tok.Bytes()
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for j, raw := range raws {
			tok, err := v.DecodeToken(raw)
			if err == nil {
				err = v.Authorize(tok, leaves[j].Public(), scopes[0], t0.Add(time.Minute))
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := int(after.HeapAlloc-before.HeapAlloc) / n
		// The link cache holds depth entries per chain too (about 100 B each).
		t.Logf("depth %d: token %d bytes, %d bytes of heap per cached chain (link cache included)", depth, len(raws[0]), per)
		if v.ChainCacheLen() != n || per > 16<<10 {
			t.Fatalf("%d chains cached, %d bytes each", v.ChainCacheLen(), per)
		}
		runtime.KeepAlive(v)
	}
}
