package revocation

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/trust"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type fx struct {
	anchor, other *trust.AnchorKey
	v             *trust.Verifier
	now           time.Time
	set           *Set
	mu            sync.Mutex
	applied       [][]byte
}

func key(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

func newFx(t testing.TB, max int) *fx {
	t.Helper()
	f := &fx{now: t0}
	f.anchor, _ = trust.GenerateAnchorKey(key(1))
	f.other, _ = trust.GenerateAnchorKey(key(2))
	var err error
	if f.v, err = trust.NewVerifier(trust.DefaultPolicy(f.anchor.Public())); err != nil {
		t.Fatal(err)
	}
	f.set = New(Deps{Verifier: f.v, Refused: refused.New(), Clock: func() time.Time { return f.now }, Max: max,
		Applied: func(issuer trust.PublicKey, canon []byte) {
			if !issuer.Equal(f.anchor.Public()) {
				t.Errorf("Applied with issuer %s", issuer)
			}
			f.mu.Lock()
			f.applied = append(f.applied, canon)
			f.mu.Unlock()
		}})
	return f
}

// revoke signs a revocation of a random credential serial by a, issued at.
func revoke(t testing.TB, a *trust.AnchorKey, serial byte, at time.Time) *trust.Revocation {
	t.Helper()
	r, err := trust.RevokeCredential(a, [16]byte{serial}, at, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// digest is what Sum must be for the canonical revocations held.
func digest(canons ...[]byte) uint64 {
	var d uint64
	for _, c := range canons {
		k := sha256.Sum256(c)
		d ^= binary.BigEndian.Uint64(k[:8])
	}
	return d
}

// A good revocation is applied to the verifier, held, reported once, and
// counted in the digest; the same bytes again change nothing.
func TestApply(t *testing.T) {
	f := newFx(t, 8)
	r := revoke(t, f.anchor, 7, t0)
	raw := r.Bytes()
	if err := f.set.Apply(raw); err != nil {
		t.Fatal(err)
	}
	if f.v.Revocations() != 1 || f.set.Len() != 1 || len(f.applied) != 1 || !bytes.Equal(f.applied[0], raw) {
		t.Fatalf("verifier %d, held %d, applied %d", f.v.Revocations(), f.set.Len(), len(f.applied))
	}
	if all := f.set.All(); len(all) != 1 || !bytes.Equal(all[0], raw) {
		t.Fatalf("All = %x", all)
	}
	if f.set.Sum() != digest(raw) || f.set.Sum() == 0 {
		t.Fatalf("Sum %x, want %x", f.set.Sum(), digest(raw))
	}
	if err := f.set.Apply(raw); err != nil || f.set.Len() != 1 || len(f.applied) != 1 {
		t.Fatalf("again: err %v, held %d, applied %d", err, f.set.Len(), len(f.applied))
	}
}

// A revocation that does not verify is refused before anything is held or
// reported, and the same bytes again are refused from the cache (the very
// error of the first refusal: no second signature check).
func TestRefusedNotHeld(t *testing.T) {
	good := revoke(t, newFx(t, 1).anchor, 1, t0).Bytes()
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1 // in the signature, the last field
	for _, tc := range []struct {
		name string
		raw  func(f *fx) []byte
		want trust.Code
	}{
		{"bad signature", func(*fx) []byte { return flipped }, trust.CodeBadSignature},
		{"untrusted issuer", func(f *fx) []byte { return revoke(t, f.other, 1, t0).Bytes() }, trust.CodeUntrustedRoot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFx(t, 8)
			raw := tc.raw(f)
			err1 := f.set.Apply(raw)
			if trust.CodeOf(err1) != tc.want {
				t.Fatalf("want %q, got %v", tc.want, err1)
			}
			if err2 := f.set.Apply(bytes.Clone(raw)); err2 != err1 {
				t.Fatalf("second refusal %v is not the cached one", err2)
			}
			if f.set.Len() != 0 || f.v.Revocations() != 0 || len(f.applied) != 0 || f.set.Sum() != 0 {
				t.Fatalf("refused revocation held: %d, verifier %d, applied %d", f.set.Len(), f.v.Revocations(), len(f.applied))
			}
		})
	}
}

// Bytes that do not decode are refused, and nothing is held.
func TestMalformed(t *testing.T) {
	f := newFx(t, 8)
	for _, raw := range [][]byte{nil, {0xff, 0xff}, bytes.Repeat([]byte{1}, trust.MaxRevocationSize+1)} {
		if err := f.set.Apply(raw); err == nil {
			t.Fatalf("%x accepted", raw)
		}
	}
	if f.set.Len() != 0 || len(f.applied) != 0 {
		t.Fatal("malformed bytes held")
	}
}

// A revocation whose keep (with the verifier's floor) has passed is
// accepted and dropped: nothing held, nothing reported.
func TestExpiredDropped(t *testing.T) {
	f := newFx(t, 8)
	r := revoke(t, f.anchor, 3, t0.Add(-8*24*time.Hour)) // past a week's credential
	if keep := f.v.KeepUntil(r); keep.After(t0) {
		t.Fatalf("fixture: kept until %s, after now", keep)
	}
	if err := f.set.Apply(r.Bytes()); err != nil {
		t.Fatal(err)
	}
	if f.set.Len() != 0 || f.v.Revocations() != 0 || len(f.applied) != 0 {
		t.Fatalf("expired revocation held: %d, verifier %d, applied %d", f.set.Len(), f.v.Revocations(), len(f.applied))
	}
	// The same bytes again cost a hash: the cached verdict, the very same
	// error each time (no signature check makes a new one).
	again1, again2 := f.set.Apply(r.Bytes()), f.set.Apply(r.Bytes())
	if trust.CodeOf(again1) != trust.CodeExpired || again1 != again2 {
		t.Fatalf("expired again: %v, then %v; want one cached expired verdict", again1, again2)
	}
	// An expired one with a broken signature is refused all the same.
	raw := r.Bytes()
	raw[len(raw)-1] ^= 1
	if err := f.set.Apply(raw); trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("expired, broken: want bad_signature, got %v", err)
	}
}

// Past Max revocations a new one is refused full, not held and not
// cached; once a held one's keep passed, it fits (Room prunes).
func TestBound(t *testing.T) {
	f := newFx(t, 2)
	old := revoke(t, f.anchor, 1, t0.Add(-7*24*time.Hour)) // kept about a day less than the others
	mid := revoke(t, f.anchor, 2, t0)
	next := revoke(t, f.anchor, 3, t0)
	for _, r := range []*trust.Revocation{old, mid} {
		if err := f.set.Apply(r.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	err := f.set.Apply(next.Bytes())
	if trust.CodeOf(err) != trust.CodeFull || f.set.Len() != 2 || len(f.applied) != 2 {
		t.Fatalf("past the bound: %v, held %d, applied %d", err, f.set.Len(), len(f.applied))
	}
	f.now = f.v.KeepUntil(old)
	if err := f.set.Apply(next.Bytes()); err != nil {
		t.Fatalf("after old's keep passed: %v", err)
	}
	if f.set.Len() != 2 || f.set.Sum() != digest(mid.Bytes(), next.Bytes()) {
		t.Fatalf("held %d, sum %x", f.set.Len(), f.set.Sum())
	}
}

// Prune forgets from the set and the verifier what was kept past its
// time, and the digest returns to that of what is left.
func TestPrune(t *testing.T) {
	f := newFx(t, 8)
	short := revoke(t, f.anchor, 1, t0.Add(-7*24*time.Hour))
	long := revoke(t, f.anchor, 2, t0)
	for _, r := range []*trust.Revocation{short, long} {
		if err := f.set.Apply(r.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	f.set.Prune(f.v.KeepUntil(short).Add(-time.Second))
	if f.set.Len() != 2 || f.v.Revocations() != 2 {
		t.Fatalf("pruned early: %d held", f.set.Len())
	}
	f.set.Prune(f.v.KeepUntil(short))
	if f.set.Len() != 1 || f.v.Revocations() != 1 || f.set.Sum() != digest(long.Bytes()) {
		t.Fatalf("after prune: held %d, verifier %d, sum %x", f.set.Len(), f.v.Revocations(), f.set.Sum())
	}
	f.set.Prune(f.v.KeepUntil(long))
	if f.set.Len() != 0 || f.v.Revocations() != 0 || f.set.Sum() != 0 {
		t.Fatalf("after the last prune: held %d, sum %x", f.set.Len(), f.set.Sum())
	}
}

// The digest depends on what is held, not on the order it came in.
func TestDigestOrderFree(t *testing.T) {
	a := newFx(t, 8)
	rs := []*trust.Revocation{revoke(t, a.anchor, 1, t0), revoke(t, a.anchor, 2, t0), revoke(t, a.anchor, 3, t0)}
	b := newFx(t, 8)
	for i := range rs {
		if err := a.set.Apply(rs[i].Bytes()); err != nil {
			t.Fatal(err)
		}
		if err := b.set.Apply(rs[len(rs)-1-i].Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	if a.set.Sum() != b.set.Sum() || a.set.Sum() != digest(rs[0].Bytes(), rs[1].Bytes(), rs[2].Bytes()) {
		t.Fatalf("sums %x and %x", a.set.Sum(), b.set.Sum())
	}
}

// The same revocation applied at once from many goroutines is held and
// reported exactly once.
func TestConcurrentApplyOnce(t *testing.T) {
	f := newFx(t, 8)
	raw := revoke(t, f.anchor, 9, t0).Bytes()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.set.Apply(bytes.Clone(raw)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if f.set.Len() != 1 || len(f.applied) != 1 || f.set.Sum() != digest(raw) {
		t.Fatalf("held %d, applied %d", f.set.Len(), len(f.applied))
	}
}

// Store.Add refuses a key held already and leaves the digest as it was;
// Room prunes only when full.
func TestStore(t *testing.T) {
	s := newStore(2)
	k1, k2, k3 := [32]byte{1}, [32]byte{2}, [32]byte{3}
	if !s.Add(k1, []byte("a"), t0.Add(time.Hour)) || s.Add(k1, []byte("b"), t0.Add(2*time.Hour)) {
		t.Fatal("Add of a new key false, or of a held key true")
	}
	if s.Sum() != binary.BigEndian.Uint64(k1[:8]) {
		t.Fatalf("Sum %x after a duplicate", s.Sum())
	}
	s.Add(k2, []byte("c"), t0.Add(3*time.Hour))
	if s.Room(t0) {
		t.Fatal("room in a full store with nothing expired")
	}
	if !s.Room(t0.Add(time.Hour)) || s.Len() != 1 || !s.Has(k2) || s.Has(k1) {
		t.Fatalf("Room did not forget the expired entry: %d held", s.Len())
	}
	if !s.Add(k3, []byte("d"), t0) || s.Sum() != binary.BigEndian.Uint64(k2[:8])^binary.BigEndian.Uint64(k3[:8]) {
		t.Fatalf("Sum %x", s.Sum())
	}
	if s.Max() != 2 {
		t.Fatalf("Max %d", s.Max())
	}
}
