package node

import (
	"context"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

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

// applyRevocation verifies and applies one encoded revocation (package
// revocation).
func (n *Node) applyRevocation(raw []byte) error { return n.revs.Apply(raw) }

// revocationApplied audits, persists and relays a newly applied
// revocation, and drops the agents it revokes.
func (n *Node) revocationApplied(issuer trust.PublicKey, canon []byte) {
	rec := n.record(audit.In, audit.Revocation, issuer.String())
	rec.Decision = audit.Accept
	n.audit.Write(rec)
	if n.cfg.OnRevocation != nil {
		n.cfg.OnRevocation(canon)
	}
	n.beats.PushRevocation(canon)
	n.emit(n.registry.Tick(n.now()))
}
