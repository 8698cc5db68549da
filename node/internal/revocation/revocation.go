// Package revocation holds the revocations a node applied: it verifies
// each (before anything is stored, relayed or reported), applies it to the
// verifier, keeps it, encoded, for the join-time exchange and the digest
// the node's heartbeats carry, and forgets it once what it revokes has
// expired.
package revocation

import (
	"crypto/sha256"
	"time"

	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Deps is what the set needs of the node.
type Deps struct {
	Verifier *trust.Verifier
	// Refused remembers final verdicts on relayed bytes.
	Refused *refused.Cache
	Clock   func() time.Time
	// Max bounds the revocations held.
	Max int
	// Applied is told of each newly applied revocation, canonical bytes
	// (the node audits, persists and relays it). It must not block.
	Applied func(issuer trust.PublicKey, canon []byte)
}

// Set is the revocations a node applied. Its methods are safe for
// concurrent use.
type Set struct {
	d     Deps
	store *Store
}

// New returns an empty set.
func New(d Deps) *Set { return &Set{d: d, store: newStore(d.Max)} }

// Apply verifies and applies one encoded revocation, remembers it
// for the join-time exchange, and drops the agents it revokes. Nothing is
// stored, relayed or reported before the revocation's issuer and signature
// verified; the same bytes refused before are refused again for the cost
// of a hash.
func (s *Set) Apply(raw []byte) error {
	r, err := trust.ParseRevocation(raw)
	if err != nil {
		return err
	}
	canon := r.Bytes()
	key := sha256.Sum256(canon)
	if s.store.Has(key) {
		return nil // these exact bytes verified before
	}
	bad := refused.Key("revocation", canon)
	if err := s.d.Refused.Get(bad); err != nil {
		return err
	}
	now := s.d.Clock()
	keep := s.d.Verifier.KeepUntil(r)
	if !now.Before(keep) {
		// What it revokes has expired: verified, nothing to keep. The
		// same bytes again cost a hash: they are remembered as expired
		// (and then ignored, not relayed; no one is charged).
		err := s.d.Verifier.AddRevocation(r, now)
		if err == nil {
			s.d.Refused.Add(bad, protocol.Reject(trust.CodeExpired, "revocation of what has expired"))
		} else {
			s.d.Refused.Add(bad, err)
		}
		return err
	}
	if !s.store.Room(now) {
		return protocol.Reject(trust.CodeFull, "this node holds %d revocations, its limit", s.store.Max())
	}
	if err := s.d.Verifier.AddRevocation(r, now); err != nil {
		s.d.Refused.Add(bad, err)
		return err
	}
	if !s.store.Add(key, canon, keep) {
		return nil // applied concurrently
	}
	s.d.Applied(r.Issuer, canon)
	return nil
}

// Prune forgets the revocations kept past their time.
func (s *Set) Prune(now time.Time) {
	s.store.Prune(now)
	s.d.Verifier.PruneRevocations(now)
}

// All returns every revocation held, encoded.
func (s *Set) All() [][]byte { return s.store.All() }

// Len returns how many revocations are held.
func (s *Set) Len() int { return s.store.Len() }

// Sum returns the digest of what is held, compared between neighbours.
func (s *Set) Sum() uint64 { return s.store.Sum() }
