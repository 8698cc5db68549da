package node

import (
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/trust"
)

// AuditRecord is one line of the audit log; package audit (internal)
// documents its fields, kinds and decisions.
type AuditRecord = audit.Record

// record starts this node's audit record of something that came in from
// other (a peer or agent) or went out to it: the one place records are
// built. Callers set the decision and what else they know.
func (n *Node) record(dir audit.Direction, kind audit.Kind, other string) audit.Record {
	r := audit.Record{Time: n.now(), Direction: dir, Kind: kind, Sender: other, Recipient: n.ID().String()}
	if dir == audit.Out {
		r.Sender, r.Recipient = r.Recipient, other
	}
	return r
}

// reject marks r refused with code and detail.
func reject(r *audit.Record, code trust.Code, detail string) {
	r.Decision, r.Reason, r.Detail = audit.Reject, string(code), detail
}

// SetAuditHook registers f to see every audit record as it is written. f
// may be called from several goroutines at once, the pubsub router's
// among them: it must be safe for concurrent use and must not block.
func (n *Node) SetAuditHook(f func(AuditRecord)) { n.audit.SetHook(f) }
