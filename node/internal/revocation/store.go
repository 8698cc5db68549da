package revocation

import (
	"encoding/binary"
	"sync"
	"time"
)

// Store holds the revocations this node applied, encoded, for the
// join-time exchange and the revocation digest. An entry is keyed by the
// hash of the revocation's canonical encoding, made only after its
// signature and issuer verified: bytes that are not the same as verified
// ones are never taken for them. It holds at most max entries and forgets
// each once the verifier's KeepUntil of it passed (what it revoked has
// expired by then).
type Store struct {
	mu     sync.Mutex
	max    int
	m      map[[32]byte]heldRevocation
	digest uint64 // XOR of the first 8 bytes of every key
}

type heldRevocation struct {
	raw  []byte
	keep time.Time
}

// newStore returns a store of at most max revocations.
func newStore(max int) *Store {
	return &Store{max: max, m: map[[32]byte]heldRevocation{}}
}

// Has reports whether k is held.
func (s *Store) Has(k [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[k]
	return ok
}

// Room reports whether a new entry fits, forgetting expired ones first
// when the store is full.
func (s *Store) Room(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) < s.max {
		return true
	}
	s.pruneLocked(now)
	return len(s.m) < s.max
}

// Add stores raw under k; it reports false when k was held already.
func (s *Store) Add(k [32]byte, raw []byte, keep time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		return false
	}
	s.m[k] = heldRevocation{raw: raw, keep: keep}
	s.digest ^= binary.BigEndian.Uint64(k[:8])
	return true
}

// Prune forgets the revocations kept past their time.
func (s *Store) Prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
}

func (s *Store) pruneLocked(now time.Time) {
	for k, r := range s.m {
		if !now.Before(r.keep) {
			delete(s.m, k)
			s.digest ^= binary.BigEndian.Uint64(k[:8])
		}
	}
}

// All returns every revocation held, encoded.
func (s *Store) All() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, 0, len(s.m))
	for _, r := range s.m {
		out = append(out, r.raw)
	}
	return out
}

// Len returns how many revocations are held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Sum returns the digest of what is held: the XOR of the first 8 bytes
// of every key, compared between neighbours.
func (s *Store) Sum() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.digest
}

// Max returns the store's bound.
func (s *Store) Max() int { return s.max }
