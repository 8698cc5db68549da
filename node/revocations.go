package node

import (
	"context"
	"crypto/sha256"
	"time"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

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
	if n.revs.Has(key) {
		return nil // these exact bytes verified before
	}
	bad := refused.Key("revocation", canon)
	if err := n.bad.Get(bad); err != nil {
		return err
	}
	now := n.now()
	keep := n.verifier.KeepUntil(r)
	if !now.Before(keep) {
		// What it revokes has expired: verified, nothing to keep.
		err := n.verifier.AddRevocation(r, now)
		n.bad.Add(bad, err)
		return err
	}
	if !n.revs.Room(now) {
		return protocol.Reject(trust.CodeFull, "this node holds %d revocations, its limit", n.revs.Max())
	}
	if err := n.verifier.AddRevocation(r, now); err != nil {
		n.bad.Add(bad, err)
		return err
	}
	if !n.revs.Add(key, canon, keep) {
		return nil // applied concurrently
	}
	rec := n.record(audit.In, audit.Revocation, r.Issuer.String())
	rec.Decision = audit.Accept
	n.audit.Write(rec)
	if n.cfg.OnRevocation != nil {
		n.cfg.OnRevocation(canon)
	}
	n.beats.PushRevocation(canon)
	n.emit(n.registry.Tick(n.now()))
	return nil
}

// pruneRevocations forgets the revocations kept past their time.
func (n *Node) pruneRevocations(now time.Time) {
	n.revs.Prune(now)
	n.verifier.PruneRevocations(now)
}

// Revoke applies an encoded revocation locally and publishes it to the
// mesh, where every node verifies and applies it. A revocation that does
// not verify is refused here and never published.
func (n *Node) Revoke(ctx context.Context, raw []byte) error {
	if err := n.applyRevocation(raw); err != nil {
		return err
	}
	n.mu.Lock()
	t := n.topics[wire.TopicRevocations]
	n.mu.Unlock()
	if t == nil {
		return ErrNotStarted
	}
	return t.Publish(ctx, raw)
}

func (n *Node) revocations() [][]byte { return n.revs.All() }
