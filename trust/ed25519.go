package trust

import (
	"hash/maphash"
	"sync"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// stdlibOptions make curve25519-voi accept exactly what crypto/ed25519
// accepts: the cofactorless equation with the result compared byte for
// byte to R (so a non-canonical R never matches), S < L, and any A that
// decodes, small-order and non-canonical encodings included (Verify
// refuses the small-order ones before, see PublicKey.Weak). The
// differential tests (ed25519_test.go) and FuzzVerifyDifferential hold
// the two to it. These options are incompatible with voi's batch
// verification, which is cofactored; see TestBatchIsNotExact for why no
// batch is used.
var stdlibOptions = &voi.Options{Verify: voi.VerifyOptionsStdLib}

// verifySig checks an Ed25519 signature as crypto/ed25519.Verify does, with
// the expanded form of keys seen before (see keyCache).
func verifySig(k PublicKey, msg, sig []byte) bool {
	return expandedKeys.verify(k, msg, sig)
}

// Key cache bounds. An expanded key is about 1.5 KiB, so the cache holds
// at most about 6 MiB; the doorkeeper about 0.5 MiB.
const (
	keyCacheSize = 4096  // expanded keys
	doorSize     = 16384 // fingerprints of keys seen once
	maxKeyUses   = 3     // CLOCK counter ceiling: rotations a key survives unused
)

// expandedKeys is the process's one key cache. It is global because
// PublicKey.Verify, the one place every signature is checked, has no
// other home for it; it holds only public keys and is safe for
// concurrent use.
var expandedKeys = newKeyCache(keyCacheSize, doorSize)

// keyCache keeps the expanded (precomputed) form of the public keys that
// sign often, which verifies in about 0.8 of the time of a plain voi
// verification (BENCHMARKS.md, issue 15).
//
// Who can fill it: a key enters only on its second valid signature seen
// (the first is remembered as a 64-bit keyed fingerprint in a
// doorkeeper that forgets the oldest of doorSize), so fresh keys with one signature each, the cheap attack,
// only churn the doorkeeper. Eviction is CLOCK with a use counter: a
// key starts at 0, each hit adds 1 up to maxKeyUses, and the hand takes
// the first key at 0, decrementing the others. An attacker's key used
// twice sits at 0, so the attacker's entries evict each other first; a
// key survives as long as it is used about once per rotation of the hand,
// and a rotation takes as many admissions as there are keys at 0 (keys
// unused since the hand last passed). An attacker who must pay two valid
// signatures under a fresh key per admission can still evict honest keys
// that are used less often than that: what it costs them is a plain voi
// verification instead of an expanded one (1.2 ×, still about half of
// crypto/ed25519) and one expansion when they come back. No state an
// attacker fills makes an honest verification slower than a plain voi
// one.
type keyCache struct {
	seed maphash.Seed

	mu    sync.Mutex
	idx   map[PublicKey]int
	slots []keySlot
	hand  int
	door  map[uint64]struct{} // fingerprints of keys seen once
	ring  []uint64            // the same, oldest first from next
	next  int
	stats keyCacheStats
}

type keySlot struct {
	key  PublicKey
	x    *voi.ExpandedPublicKey
	uses uint8
}

// keyCacheStats counts what the cache did; tests and benchmarks read it.
type keyCacheStats struct {
	hits, misses, admitted, evicted uint64
}

func newKeyCache(size, door int) *keyCache {
	return &keyCache{
		seed:  maphash.MakeSeed(),
		idx:   make(map[PublicKey]int, size),
		slots: make([]keySlot, 0, size),
		door:  make(map[uint64]struct{}, door),
		ring:  make([]uint64, door),
	}
}

// verify checks sig over msg under k, from the expanded key when the cache
// has it.
func (c *keyCache) verify(k PublicKey, msg, sig []byte) bool {
	if x := c.get(k); x != nil {
		return voi.VerifyExpandedWithOptions(x, msg, sig, stdlibOptions)
	}
	fp := maphash.Bytes(c.seed, k[:])
	if !c.seenOnce(fp) {
		ok := voi.VerifyWithOptions(voi.PublicKey(k[:]), msg, sig, stdlibOptions)
		if ok {
			c.remember(fp)
		}
		return ok
	}
	x, err := voi.NewExpandedPublicKey(voi.PublicKey(k[:]))
	if err != nil { // not a point: no signature verifies
		return false
	}
	ok := voi.VerifyExpandedWithOptions(x, msg, sig, stdlibOptions)
	if ok {
		c.add(k, x)
	}
	return ok
}

// get returns k's expanded key, or nil.
func (c *keyCache) get(k PublicKey) *voi.ExpandedPublicKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.idx[k]
	if !ok {
		c.stats.misses++
		return nil
	}
	c.stats.hits++
	s := &c.slots[i]
	if s.uses < maxKeyUses {
		s.uses++
	}
	return s.x
}

// seenOnce reports whether a valid signature under the key with
// fingerprint fp was seen (and not yet forgotten).
func (c *keyCache) seenOnce(fp uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.door[fp]
	return ok
}

func (c *keyCache) remember(fp uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.door[fp]; ok {
		return
	}
	if len(c.door) == len(c.ring) {
		delete(c.door, c.ring[c.next])
	}
	c.door[fp] = struct{}{}
	c.ring[c.next] = fp
	c.next = (c.next + 1) % len(c.ring)
}

func (c *keyCache) add(k PublicKey, x *voi.ExpandedPublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.idx[k]; ok {
		return
	}
	c.stats.admitted++
	if len(c.slots) < cap(c.slots) {
		c.idx[k] = len(c.slots)
		c.slots = append(c.slots, keySlot{key: k, x: x})
		return
	}
	for {
		s := &c.slots[c.hand]
		if s.uses == 0 {
			delete(c.idx, s.key)
			c.stats.evicted++
			*s = keySlot{key: k, x: x}
			c.idx[k] = c.hand
			c.hand = (c.hand + 1) % len(c.slots)
			return
		}
		s.uses--
		c.hand = (c.hand + 1) % len(c.slots)
	}
}

func (c *keyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.idx)
}

func (c *keyCache) snapshot() keyCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}
