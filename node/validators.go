package node

import (
	"context"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// registryValidator applies records and leaves. A record must be the
// pubsub author's (signature checked by pubsub under StrictSign); a leave
// carries the leaving agent's own signature, so any node may relay it. An
// item broken or forged in itself is rejected (which lowers the
// forwarder's score) and charged to the forwarder's budget; replays, stale
// items and what rests on this node's own anchors or state are ignored.
func (n *Node) registryValidator(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if n.frozen() {
		return pubsub.ValidationIgnore
	}
	author, err := trust.PublicKeyFromPeerID(m.GetFrom())
	if err != nil {
		n.blame(m.ReceivedFrom, audit.Announcement, trust.CodeOf(err)) // weak_key is no forwarder's fault
		return verdict(err)
	}
	if author.Equal(n.self) {
		return pubsub.ValidationAccept
	}
	var rm protocolpb.RegistryMessage
	kind := audit.Announcement
	if err := proto.Unmarshal(m.Data, &rm); err != nil {
		n.blame(m.ReceivedFrom, kind, trust.CodeMalformed)
		return pubsub.ValidationReject
	}
	switch x := rm.Msg.(type) {
	case *protocolpb.RegistryMessage_Announce:
		err = n.records.Apply(x.Announce, discovery.Direct, author)
	case *protocolpb.RegistryMessage_Leave:
		// Signed by the leaving agent; any node may relay it.
		kind = audit.Leave
		_, err = n.records.ApplyLeave(x.Leave)
	default:
		err = protocol.Reject(trust.CodeMalformed, "empty registry message")
	}
	n.blame(m.ReceivedFrom, kind, trust.CodeOf(err))
	return verdict(err)
}

// verdict maps the result of applying a relayed item to pubsub's: accept,
// reject what the forwarder should have refused itself, ignore the rest.
func verdict(err error) pubsub.ValidationResult {
	switch code := trust.CodeOf(err); {
	case err == nil:
		return pubsub.ValidationAccept
	case forwarderFault[code] || code == "":
		return pubsub.ValidationReject
	default:
		return pubsub.ValidationIgnore
	}
}

// revocationValidator verifies and applies a revocation, then forwards it.
func (n *Node) revocationValidator(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	err := n.applyRevocation(m.Data)
	n.blame(m.ReceivedFrom, audit.Revocation, trust.CodeOf(err))
	return verdict(err)
}
