package node

import (
	"context"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/refused"
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
		err = n.applyRecord(x.Announce, discovery.Direct, author)
	case *protocolpb.RegistryMessage_Leave:
		// Signed by the leaving agent; any node may relay it.
		kind = audit.Leave
		_, err = n.applyLeave(x.Leave)
	default:
		err = protocol.Reject(trust.CodeMalformed, "empty registry message")
	}
	n.blame(m.ReceivedFrom, kind, trust.CodeOf(err))
	return verdict(err)
}

// checkRecord is the part of applying a record a peer sent or relayed that
// comes before the registry: a record the registry holds already is
// nothing new (nil, nil); one whose bytes were refused before is refused
// again for the cost of a hash; otherwise its structure and self-signature
// are checked, and that it is author's when author is set (a pubsub
// author must publish only its own record). key names the bytes for
// remembering a refusal.
func (n *Node) checkRecord(a *protocolpb.Announcement, author trust.PublicKey) (rec *discovery.Record, key [32]byte, err error) {
	if n.registry.Holds(a) {
		return nil, key, nil
	}
	key = refused.Key("record", author[:], a.GetBody(), a.GetSignature())
	if err := n.bad.Get(key); err != nil {
		return nil, key, err
	}
	if err := n.recordRate(a); err != nil {
		return nil, key, err
	}
	if err := n.refusedUnsigned(a); err != nil {
		return nil, key, err
	}
	rec, err = discovery.ParseRecord(a)
	if err == nil && !author.IsZero() && !rec.Agent.Equal(author) {
		err = protocol.Reject(protocol.CodeImpersonation, "record of %s published by %s", rec.Agent, author)
	}
	if err != nil {
		n.bad.Add(key, err)
		return nil, key, err
	}
	return rec, key, nil
}

// refusedUnsigned refuses, before any signature check, a record this node
// would refuse for its own configuration whatever its signatures: an
// agent off the allowlist, a credential of an anchor it does not trust or
// longer than its policy allows. Such records, which cost an outsider a
// signature each to make, cost the node a decode.
func (n *Node) refusedUnsigned(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	if !n.registry.Allowed(trust.PublicKey(b.Agent)) {
		return protocol.Reject(protocol.CodeUnlisted, "%s is not on this node's allowlist", trust.PublicKey(b.Agent))
	}
	c, err := trust.CredentialFromProto(b.Credential)
	if err != nil {
		return nil
	}
	if !n.verifier.IsAnchor(c.Issuer) {
		return protocol.Reject(trust.CodeUntrustedRoot, "credential issuer %s is not a trusted anchor", c.Issuer)
	}
	if max := n.verifier.Policy().MaxCredentialLifetime; c.Expires.Sub(c.NotBefore) > max {
		return protocol.Reject(trust.CodeLifetime, "credential lifetime %s exceeds the maximum %s", c.Expires.Sub(c.NotBefore), max)
	}
	return nil
}

// recordBurst and one a heartbeat bound the new records of one listed
// agent that this node checks: an honest agent signs a new record when it
// starts, renews, changes addresses, after admissions (at most every tenth
// beat) and every sixtieth beat. Each new record costs a signature check
// at every node it reaches; past the bound it is refused before the check
// and not relayed. Records of agents not listed yet (joins) are not
// limited here.
const recordBurst = 4

// recordRate refuses a new record of a listed agent past its rate, before
// any signature check.
func (n *Node) recordRate(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	agent := trust.PublicKey(b.Agent)
	if n.registry.State(agent) == 0 || b.Seq <= n.registry.Seq(agent) {
		return nil // a join, or an old record: checked (and cached) as before
	}
	ok := n.live.records.Allow(string(agent[:]))
	if !ok {
		return protocol.Reject(protocol.CodeFlood, "new records of %s past %d at once and one a heartbeat", agent, recordBurst)
	}
	return nil
}

// applyRecord checks a record (checkRecord) and enters it in the registry
// (learn), remembering a final refusal.
func (n *Node) applyRecord(a *protocolpb.Announcement, src discovery.Source, author trust.PublicKey) error {
	rec, key, err := n.checkRecord(a, author)
	if err != nil || rec == nil {
		return err
	}
	if err := n.learn(rec, src); err != nil {
		n.bad.Add(key, err)
		return err
	}
	return nil
}

// applyLeave applies a leave, and relays it on the beat overlay when it
// was news. A leave of an agent this node does not list, or one not newer
// than the agent's last sequence number, changes nothing and is dropped
// before its signature is checked.
func (n *Node) applyLeave(l *protocolpb.Leave) (news bool, err error) {
	agent, err := trust.PublicKeyFromBytes(l.GetAgent())
	if err != nil {
		return false, err
	}
	if n.registry.State(agent) == 0 {
		return false, protocol.Reject(protocol.CodeUnlisted, "leave of %s, which this node does not list", agent)
	}
	if seq := n.registry.Seq(agent); l.GetSeq() <= seq {
		return false, protocol.Reject(protocol.CodeReplay, "leave of %s has seq %d, already at %d", agent, l.GetSeq(), seq)
	}
	if _, err := discovery.VerifyLeave(l); err != nil {
		return false, err
	}
	evs, err := n.registry.Leave(agent, l.Seq, n.now())
	n.emit(evs)
	if err == nil && len(evs) > 0 {
		n.beats.PushLeave(l)
	}
	return len(evs) > 0, err
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
