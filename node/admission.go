package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"golang.org/x/sync/singleflight"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/gate"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

const maxHelloSize = trust.MaxCredentialSize + 64

// members is the node's gatekeeper: the connection gater, the admission
// protocol, and the protocol.Membership that the decision function asks on
// every envelope. The list of agents itself is the discovery registry.
type members struct {
	n         *Node
	g         *gate.Gate
	admitting singleflight.Group
	helloing  sync.Map // peers whose hello is being checked
}

func newMembers(n *Node, g *gate.Gate) *members { return &members{n: n, g: g} }

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

func (m *members) isAdmitted(p peer.ID) bool { return m.n.isAdmitted(p) }

// check verifies a peer's hello: a registry record of exactly that peer,
// self-signed, with a credential from a trusted anchor, valid now and
// unrevoked. It enters the record in the registry.
func (m *members) check(p peer.ID, raw []byte) error {
	var h protocolpb.Hello
	if err := proto.Unmarshal(raw, &h); err != nil {
		return protocol.Reject(trust.CodeMalformed, "hello: %v", err)
	}
	if h.Version != protocol.Version {
		return protocol.Reject(protocol.CodeVersion, "hello version %d", h.Version)
	}
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return err
	}
	// Whose record it is, before its signatures are checked: a copy of
	// another agent's record costs the node a decode, not two checks.
	var body protocolpb.AnnouncementBody
	if h.Announcement == nil || proto.Unmarshal(h.Announcement.Body, &body) != nil {
		return protocol.Reject(trust.CodeMalformed, "hello: no record")
	}
	if string(body.Agent) != string(k[:]) {
		return protocol.Reject(protocol.CodeImpersonation, "record is for another agent, presented by %s", p)
	}
	rec, err := discovery.ParseRecord(h.Announcement)
	if err != nil {
		return err
	}
	if err := m.n.learn(rec, discovery.Direct); err != nil && trust.CodeOf(err) != protocol.CodeReplay {
		return err
	}
	m.g.Forgive(p)
	if h := m.n.host(); h != nil {
		m.g.AdmittedConns(h.Network().ConnsToPeer(p))
	}
	m.g.Wake()
	m.n.live.announceSoon.Store(true)
	r := m.n.record(audit.In, audit.Admission, p.String())
	r.Decision = audit.Accept
	m.n.audit.Write(r)
	return nil
}

func (m *members) hello() ([]byte, error) {
	rec, err := m.n.currentRecord()
	if err != nil {
		return nil, err
	}
	// The record carries the credential; Hello.credential (field 2) is left
	// empty and ignored on receipt.
	return proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Announcement: rec.Proto()})
}

// admit runs the exchange as the initiator: send our hello, read theirs.
// It runs even when p is listed here, since p may not list this node (it
// restarted, or it forgot a dead agent); concurrent calls for one peer
// share one exchange.
func (m *members) admit(ctx context.Context, p peer.ID) error {
	_, err, _ := m.admitting.Do(string(p), func() (any, error) { return nil, m.exchange(ctx, p) })
	return err
}

func (m *members) exchange(ctx context.Context, p peer.ID) error {
	h := m.n.host()
	ctx, cancel := context.WithTimeout(ctx, m.n.cfg.AdmissionTimeout)
	defer cancel()
	s, err := h.NewStream(network.WithAllowLimitedConn(ctx, "admission"), p, wire.ProtocolAdmission)
	if err != nil {
		return fmt.Errorf("node: admission to %s: %w", p, err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(m.n.cfg.AdmissionTimeout))
	hello, err := m.hello()
	if err != nil {
		s.Reset()
		return err
	}
	if err := msgio.NewVarintWriter(s).WriteMsg(hello); err != nil {
		s.Reset()
		return fmt.Errorf("node: admission to %s: %w", p, err)
	}
	raw, err := msgio.NewVarintReaderSize(s, maxHelloSize).ReadMsg()
	if err != nil {
		s.Reset()
		return fmt.Errorf("node: admission to %s refused: %w", p, err)
	}
	if err := m.check(p, raw); err != nil {
		s.Reset()
		m.g.Refuse(p, err)
		return fmt.Errorf("node: admission of %s: %w", p, err)
	}
	m.n.syncSoon(p) // at most once a heartbeat per peer
	m.n.resyncOnce(p)
	return nil
}

// handleAdmission runs the exchange as the responder: read their hello,
// verify it, then send ours. An outsider learns nothing but a reset.
func (m *members) handleAdmission(s network.Stream) {
	p := s.Conn().RemotePeer()
	// One hello at a time per peer, and none after a refusal (its
	// connections are being closed): a peer that opens many admission
	// streams at once gets one checked, not each of them.
	if m.g.Refused(p) {
		s.Reset()
		return
	}
	// An admitted peer that sends hello after hello on new streams gets a
	// few checked and then one a heartbeat (each costs a signature check
	// and an audit line).
	if m.isAdmitted(p) && !m.n.serveAllowed(p, wire.ProtocolAdmission) { // an outsider has one connection's worth anyway
		s.Reset()
		return
	}
	if _, busy := m.helloing.LoadOrStore(p, true); busy {
		s.Reset()
		return
	}
	defer m.helloing.Delete(p)
	_ = s.SetDeadline(time.Now().Add(m.n.cfg.AdmissionTimeout))
	raw, err := msgio.NewVarintReaderSize(s, maxHelloSize).ReadMsg()
	if err != nil {
		m.g.Refuse(p, protocol.Reject(trust.CodeMalformed, "no hello: %v", err))
		s.Reset()
		return
	}
	if err := m.check(p, raw); err != nil {
		m.g.Refuse(p, err) // audited before the peer sees the reset
		s.Reset()
		return
	}
	hello, err := m.hello()
	if err == nil {
		err = msgio.NewVarintWriter(s).WriteMsg(hello)
	}
	if err != nil {
		s.Reset()
		return
	}
	s.Close()
	m.n.syncSoon(p) // both sides learn what the other knows (at most once a heartbeat per peer)
	m.n.resyncOnce(p)
}

// notifiee starts admission on every new connection: the dialer initiates,
// always; on an inbound connection the node waits AdmissionTimeout for the
// peer's hello and then closes the connection of a peer that has not
// proved itself. An inbound connection that ends without admission spends
// its source's budget (package gate).
func (m *members) notifiee() network.Notifiee {
	return &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		p := c.RemotePeer()
		ctx := m.n.ctx
		if c.Stat().Direction == network.DirOutbound {
			go func() { _ = m.admit(ctx, p) }()
			return
		}
		if m.isAdmitted(p) {
			return
		}
		evict, ok := m.g.OpenPending(c, m.n.cfg.AdmissionTimeout/4)
		if evict != nil {
			go evict.Close()
		}
		if !ok {
			_ = c.Close()
			return
		}
		go func() {
			t := time.NewTimer(m.n.cfg.AdmissionTimeout)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !m.isAdmitted(p) {
				m.g.Refuse(p, protocol.Reject(protocol.CodeUnlisted, "no credential within %s", m.n.cfg.AdmissionTimeout))
				return
			}
			m.g.Settled(c) // listed meanwhile (a record from gossip): not a failure
		}()
	}, DisconnectedF: func(nw network.Network, c network.Conn) {
		m.g.Closed(c) // closed before its peer was admitted: its source's failure
		if p := c.RemotePeer(); !m.isAdmitted(p) && nw.Connectedness(p) != network.Connected {
			m.forget(p)
		}
	}}
}

// forget drops what the peerstore keeps of p (keys, addresses, protocols,
// metadata): an outsider's fresh key per connection would else stay for
// good.
func (m *members) forget(p peer.ID) {
	if h := m.n.host(); h != nil {
		h.Peerstore().RemovePeer(p)
		h.Peerstore().ClearAddrs(p)
	}
}

// forgetStrangers forgets every peer that is neither connected nor listed
// (once a heartbeat: identify may store a peer's addresses and protocols
// after its connection closed). Peers kept connected (bootstrap) stay.
func (m *members) forgetStrangers() {
	h := m.n.host()
	if h == nil {
		return
	}
	for _, p := range h.Peerstore().Peers() {
		if p != h.ID() && h.Network().Connectedness(p) != network.Connected && !m.isAdmitted(p) && !h.ConnManager().IsProtected(p, "") {
			m.forget(p)
		}
	}
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
