package node

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// revStore holds the revocations this node applied, encoded, for the
// join-time exchange and the revocation digest. An entry is keyed by the
// hash of the revocation's canonical encoding, made only after its
// signature and issuer verified: bytes that are not the same as verified
// ones are never taken for them. It holds at most max entries and forgets
// each once the verifier's KeepUntil of it passed (what it revoked has
// expired by then).
type revStore struct {
	mu     sync.Mutex
	max    int
	m      map[[32]byte]heldRevocation
	digest uint64 // XOR of the first 8 bytes of every key
}

type heldRevocation struct {
	raw  []byte
	keep time.Time
}

func newRevStore(max int) *revStore {
	return &revStore{max: max, m: map[[32]byte]heldRevocation{}}
}

func (s *revStore) has(k [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[k]
	return ok
}

// room reports whether a new entry fits, forgetting expired ones first
// when the store is full.
func (s *revStore) room(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) < s.max {
		return true
	}
	s.pruneLocked(now)
	return len(s.m) < s.max
}

// add stores raw under k; it reports false when k was held already.
func (s *revStore) add(k [32]byte, raw []byte, keep time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[k]; ok {
		return false
	}
	s.m[k] = heldRevocation{raw: raw, keep: keep}
	s.digest ^= binary.BigEndian.Uint64(k[:8])
	return true
}

func (s *revStore) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
}

func (s *revStore) pruneLocked(now time.Time) {
	for k, r := range s.m {
		if !now.Before(r.keep) {
			delete(s.m, k)
			s.digest ^= binary.BigEndian.Uint64(k[:8])
		}
	}
}

func (s *revStore) all() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, 0, len(s.m))
	for _, r := range s.m {
		out = append(out, r.raw)
	}
	return out
}

func (s *revStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func (s *revStore) sum() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.digest
}

// applyRevocation verifies and applies one encoded revocation, remembers it
// for the join-time exchange, and drops the agents it revokes. Nothing is
// stored, relayed or reported before the revocation's issuer and signature
// verified; the same bytes refused before are refused again for the cost
// of a hash.
func (n *Node) applyRevocation(raw []byte) error {
	r, err := trust.ParseRevocation(raw)
	if err != nil {
		return err
	}
	canon := r.Bytes()
	key := sha256.Sum256(canon)
	if n.revs.has(key) {
		return nil // these exact bytes verified before
	}
	bad := itemKey("revocation", canon)
	if err := n.bad.get(bad); err != nil {
		return err
	}
	now := n.now()
	keep := n.verifier.KeepUntil(r)
	if !now.Before(keep) {
		// What it revokes has expired: verified, nothing to keep.
		err := n.verifier.AddRevocation(r, now)
		n.bad.add(bad, err)
		return err
	}
	if !n.revs.room(now) {
		return protocol.Reject(trust.CodeFull, "this node holds %d revocations, its limit", n.revs.max)
	}
	if err := n.verifier.AddRevocation(r, now); err != nil {
		n.bad.add(bad, err)
		return err
	}
	if !n.revs.add(key, canon, keep) {
		return nil // applied concurrently
	}
	rec := n.record(audit.In, audit.Revocation, r.Issuer.String())
	rec.Decision = audit.Accept
	n.audit.Write(rec)
	if n.cfg.OnRevocation != nil {
		n.cfg.OnRevocation(canon)
	}
	n.beats.pushRevocation(canon)
	n.emit(n.registry.Tick(n.now()))
	return nil
}

// pruneRevocations forgets the revocations kept past their time.
func (n *Node) pruneRevocations(now time.Time) {
	n.revs.prune(now)
	n.verifier.PruneRevocations(now)
}

// Revocations returns how many revocations this node holds.
func (n *Node) Revocations() int { return n.revs.len() }

// Revoke applies an encoded revocation locally and publishes it to the
// mesh, where every node verifies and applies it. A revocation that does
// not verify is refused here and never published.
func (n *Node) Revoke(ctx context.Context, raw []byte) error {
	if err := n.applyRevocation(raw); err != nil {
		return err
	}
	n.mu.Lock()
	t := n.topics[RevocationTopic]
	n.mu.Unlock()
	if t == nil {
		return ErrNotStarted
	}
	return t.Publish(ctx, raw)
}

func (n *Node) revocations() [][]byte { return n.revs.all() }
