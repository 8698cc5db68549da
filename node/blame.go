package node

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// forwarderFault are the rejections of a relayed item that its forwarder
// could and should have refused itself, whatever its own configuration:
// the item is broken or forged in itself. A verdict that rests on the
// receiver's own anchors, policy limits, clock, revocations or state
// (untrusted_root, too_large, too_deep, expired, revoked, stale, dead,
// unlisted, replay, version) is not the forwarder's doing: such an item is
// ignored, and no forwarder is ever blamed for it.
var forwarderFault = map[trust.Code]bool{
	trust.CodeBadSignature: true, trust.CodeMalformed: true, trust.CodeEscalation: true, trust.CodeWildcard: true,
	trust.CodeNotHolder: true, protocol.CodeImpersonation: true, protocol.CodeWrongRecipient: true,
	protocol.CodeNoToken: true, trust.CodeScopeNotGranted: true, protocol.CodeWrongKind: true,
}

func codeOrDefault(err error, def trust.Code) trust.Code {
	if c := trust.CodeOf(err); c != "" {
		return c
	}
	return def
}

func errDetail(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// blame audits a relayed item's refusal with a code that p, which sent it,
// should have refused itself (forwarderFault), and spends p's rejection
// budget; it reports whether p was cut off. Other codes are not p's doing
// and pass.
func (n *Node) blame(p peer.ID, kind audit.Kind, code trust.Code) bool {
	if !forwarderFault[code] {
		return false
	}
	r := n.record(audit.In, kind, p.String())
	reject(&r, code, "")
	n.audit.Write(r)
	return n.gate.Penalize(p, code)
}
