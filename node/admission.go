package node

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// refuseFor is how long a peer that failed admission is refused by the
// connection gater before it may try again (with a valid credential).
const refuseFor = time.Minute

const maxHelloSize = trust.MaxCredentialSize + 64

type member struct {
	cred *trust.Credential
}

// members is the node's list of admitted agents. It is the connection
// gater, the admission protocol, and the Membership that the decision
// function asks on every envelope.
type members struct {
	n        *Node
	mu       sync.RWMutex
	admitted map[trust.PublicKey]*member
	refused  map[peer.ID]time.Time
}

func newMembers(n *Node) *members {
	return &members{n: n, admitted: map[trust.PublicKey]*member{}, refused: map[peer.ID]time.Time{}}
}

// Admit implements protocol.Membership: the sender must be this node or an
// admitted agent whose credential is still valid and unrevoked.
func (m *members) Admit(sender trust.PublicKey) error {
	if sender.Equal(m.n.self) {
		return nil
	}
	m.mu.RLock()
	mem, ok := m.admitted[sender]
	m.mu.RUnlock()
	if !ok {
		return protocol.Reject(protocol.CodeUnlisted, "%s has not presented a valid credential", sender)
	}
	now := m.n.now()
	if !now.Before(mem.cred.Expires.Add(m.n.cfg.Policy.ClockSkew)) {
		return protocol.Reject(protocol.CodeUnlisted, "credential of %s expired at %s", sender, mem.cred.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

func (m *members) isAdmitted(p peer.ID) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.admitted[k]
	return ok
}

func (m *members) isRefused(p peer.ID) bool {
	m.mu.RLock()
	until, ok := m.refused[p]
	m.mu.RUnlock()
	return ok && m.n.now().Before(until)
}

// refuse drops p, closes its connections and makes the gater refuse it.
func (m *members) refuse(p peer.ID, reason error) {
	m.mu.Lock()
	m.refused[p] = m.n.now().Add(refuseFor)
	if k, err := trust.PublicKeyFromPeerID(p); err == nil {
		delete(m.admitted, k)
	}
	m.mu.Unlock()
	m.n.audit.write(AuditRecord{Time: m.n.now(), Direction: "in", Kind: "admission", Sender: p.String(),
		Recipient: m.n.ID().String(), Decision: "reject", Reason: string(codeOrDefault(reason, protocol.CodeUnlisted)), Detail: errDetail(reason)})
	if h := m.n.Host(); h != nil {
		_ = h.Network().ClosePeer(p)
	}
}

func (m *members) list() []PeerInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]PeerInfo, 0, len(m.admitted))
	for k, mem := range m.admitted {
		out = append(out, PeerInfo{PeerID: k.PeerID(), Name: mem.cred.Name, State: "alive", Expires: mem.cred.Expires.UTC()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// check verifies a peer's hello: a credential for exactly that peer,
// signed by a trusted anchor, valid now and unrevoked.
func (m *members) check(p peer.ID, raw []byte) (*trust.Credential, error) {
	var h protocolpb.Hello
	if err := proto.Unmarshal(raw, &h); err != nil {
		return nil, protocol.Reject(trust.CodeMalformed, "hello: %v", err)
	}
	if h.Version != protocol.Version {
		return nil, protocol.Reject(protocol.CodeVersion, "hello version %d", h.Version)
	}
	c, err := trust.CredentialFromProto(h.Credential)
	if err != nil {
		return nil, err
	}
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return nil, err
	}
	if !c.Subject.Equal(k) {
		return nil, protocol.Reject(protocol.CodeImpersonation, "credential is for %s, presented by %s", c.Subject, p)
	}
	if err := m.n.verifier.VerifyCredential(c, m.n.now()); err != nil {
		return nil, err
	}
	return c, nil
}

func (m *members) add(c *trust.Credential) {
	m.mu.Lock()
	m.admitted[c.Subject] = &member{cred: c}
	delete(m.refused, c.Subject.PeerID())
	m.mu.Unlock()
	m.n.audit.write(AuditRecord{Time: m.n.now(), Direction: "in", Kind: "admission", Sender: c.Subject.String(),
		Recipient: m.n.ID().String(), Decision: "accept"})
}

func (m *members) hello() ([]byte, error) {
	return proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Credential: m.n.cfg.Credential.Proto()})
}

// admit runs the exchange as the initiator: send our hello, read theirs.
func (m *members) admit(ctx context.Context, p peer.ID) error {
	if m.isAdmitted(p) {
		return nil
	}
	h := m.n.Host()
	ctx, cancel := context.WithTimeout(ctx, m.n.cfg.AdmissionTimeout)
	defer cancel()
	s, err := h.NewStream(network.WithAllowLimitedConn(ctx, "admission"), p, protocol.ProtocolAdmission)
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
	c, err := m.check(p, raw)
	if err != nil {
		s.Reset()
		m.refuse(p, err)
		return fmt.Errorf("node: admission of %s: %w", p, err)
	}
	m.add(c)
	return nil
}

// handleAdmission runs the exchange as the responder: read their hello,
// verify it, then send ours. An outsider learns nothing but a reset.
func (m *members) handleAdmission(s network.Stream) {
	p := s.Conn().RemotePeer()
	_ = s.SetDeadline(time.Now().Add(m.n.cfg.AdmissionTimeout))
	raw, err := msgio.NewVarintReaderSize(s, maxHelloSize).ReadMsg()
	if err != nil {
		s.Reset()
		m.refuse(p, protocol.Reject(trust.CodeMalformed, "no hello: %v", err))
		return
	}
	c, err := m.check(p, raw)
	if err != nil {
		s.Reset()
		m.refuse(p, err)
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
	m.add(c)
	s.Close()
}

// notifiee starts admission on every new connection: the dialer initiates;
// on an inbound connection the node waits AdmissionTimeout for the peer's
// hello and then closes the connection of a peer that has not proved
// itself.
func (m *members) notifiee() network.Notifiee {
	return &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		p := c.RemotePeer()
		if m.isAdmitted(p) {
			return
		}
		ctx := m.n.ctx
		if c.Stat().Direction == network.DirOutbound {
			go func() { _ = m.admit(ctx, p) }()
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
				m.refuse(p, protocol.Reject(protocol.CodeUnlisted, "no credential within %s", m.n.cfg.AdmissionTimeout))
			}
		}()
	}}
}

// Connection gater: a peer that failed admission is refused at dial time
// and right after the TLS handshake, where its peer ID is authenticated.
func (m *members) InterceptPeerDial(p peer.ID) bool                                { return !m.isRefused(p) }
func (m *members) InterceptAddrDial(peer.ID, ma.Multiaddr) bool                    { return true }
func (m *members) InterceptAccept(network.ConnMultiaddrs) bool                     { return true }
func (m *members) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
func (m *members) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return !m.isRefused(p)
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
