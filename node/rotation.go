package node

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/renewal"
	"github.com/meshagent/meshagent/trust"
)

// CredentialStatus says when the credential expires and whether its
// renewal is overdue.
type CredentialStatus = renewal.Status

// renewalServed audits a renewal this node served (as an issuer, or
// refused as one) and charges the requester for what it should not have
// sent.
func (n *Node) renewalServed(p peer.ID, err error) {
	if code := trust.CodeOf(err); forwarderFault[code] {
		n.gate.Penalize(p, code)
	}
	r := n.record(audit.In, audit.Renewal, p.String())
	r.Decision = audit.Accept
	if err != nil {
		reject(&r, codeOrDefault(err, trust.CodeMalformed), trust.DetailOf(err))
	}
	n.audit.Write(r)
}

// renewed takes this agent's renewed credential: it is announced,
// audited, and given to Config.OnCredential.
func (n *Node) renewed(c *trust.Credential) {
	n.credMu.Lock()
	n.cred = c
	n.credMu.Unlock()
	_ = n.own.Announce()
	r := n.record(audit.Out, audit.Renewal, "")
	r.Decision, r.Detail = audit.Accept, "credential renewed until "+c.Expires.UTC().Format(time.RFC3339)
	n.audit.Write(r)
	if n.cfg.OnCredential != nil {
		n.cfg.OnCredential(c)
	}
}
