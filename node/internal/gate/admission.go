package gate

// The admission exchange: each side of a new connection sends a hello
// (its signed registry record, with its credential) and checks the
// other's before the gate lets the peer through.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"golang.org/x/sync/singleflight"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// maxHelloSize bounds a hello: the credential, the sender's record (which
// carries the credential again and up to discovery.MaxActions advertised
// names) and framing. Read before admission, one hello at a time per peer.
const maxHelloSize = trust.MaxCredentialSize + discovery.MaxRecordSize + 64

// AdmissionDeps is what the exchange needs of the node.
type AdmissionDeps struct {
	Gate *Gate
	// Host returns the libp2p host (nil before start).
	Host func() host.Host
	// Timeout is the admission timeout.
	Timeout time.Duration
	// Listed reports whether the registry lists p.
	Listed func(p peer.ID) bool
	// Record returns this node's current signed record, for its hello.
	Record func() (*discovery.Record, error)
	// Learn enters a peer's verified record in the registry, as learned
	// from the peer itself.
	Learn func(rec *discovery.Record) error
	// HelloAllowed reports whether an admitted p may have another hello
	// checked now (each costs a signature check and an audit line).
	HelloAllowed func(p peer.ID) bool
	// Admitted is told of each peer whose hello passed (it audits the
	// admission and announces this node soon); Exchanged of each completed
	// exchange (it asks the peer for what it knows).
	Admitted, Exchanged func(p peer.ID)
}

// Admission runs the exchange on both sides. Its methods are safe for
// concurrent use.
type Admission struct {
	d         AdmissionDeps
	ctx       context.Context
	admitting singleflight.Group
	helloing  sync.Map // peers whose hello is being checked
}

// NewAdmission returns the exchange; ctx is the node's (the waits of
// inbound connections end with it).
func NewAdmission(ctx context.Context, d AdmissionDeps) *Admission {
	return &Admission{d: d, ctx: ctx}
}

// check verifies a peer's hello: a registry record of exactly that peer,
// self-signed, with a credential from a trusted anchor, valid now and
// unrevoked. It enters the record in the registry.
func (a *Admission) check(p peer.ID, raw []byte) error {
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
	if err := a.d.Learn(rec); err != nil && trust.CodeOf(err) != protocol.CodeReplay {
		return err
	}
	a.d.Gate.Forgive(p)
	if h := a.d.Host(); h != nil {
		a.d.Gate.AdmittedConns(h.Network().ConnsToPeer(p))
	}
	a.d.Gate.Wake()
	a.d.Admitted(p)
	return nil
}

func (a *Admission) hello() ([]byte, error) {
	rec, err := a.d.Record()
	if err != nil {
		return nil, err
	}
	// The record carries the credential; Hello.credential (field 2) is left
	// empty and ignored on receipt.
	return proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Announcement: rec.Proto()})
}

// Admit runs the exchange as the initiator: send our hello, read theirs.
// It runs even when p is listed here, since p may not list this node (it
// restarted, or it forgot a dead agent); concurrent calls for one peer
// share one exchange.
func (a *Admission) Admit(ctx context.Context, p peer.ID) error {
	_, err, _ := a.admitting.Do(string(p), func() (any, error) { return nil, a.exchange(ctx, p) })
	return err
}

func (a *Admission) exchange(ctx context.Context, p peer.ID) error {
	h := a.d.Host()
	ctx, cancel := context.WithTimeout(ctx, a.d.Timeout)
	defer cancel()
	s, err := h.NewStream(network.WithAllowLimitedConn(ctx, "admission"), p, wire.ProtocolAdmission)
	if err != nil {
		return fmt.Errorf("node: admission to %s: %w", p, err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(a.d.Timeout))
	hello, err := a.hello()
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
	if err := a.check(p, raw); err != nil {
		s.Reset()
		a.d.Gate.Refuse(p, err)
		return fmt.Errorf("node: admission of %s: %w", p, err)
	}
	a.d.Exchanged(p)
	return nil
}

// Handle runs the exchange as the responder: read their hello,
// verify it, then send ours. An outsider learns nothing but a reset.
func (a *Admission) Handle(s network.Stream) {
	p := s.Conn().RemotePeer()
	// One hello at a time per peer, and none after a refusal (its
	// connections are being closed): a peer that opens many admission
	// streams at once gets one checked, not each of them.
	if a.d.Gate.Refused(p) {
		s.Reset()
		return
	}
	// An admitted peer that sends hello after hello on new streams gets a
	// few checked and then one a heartbeat (each costs a signature check
	// and an audit line).
	if a.d.Listed(p) && !a.d.HelloAllowed(p) { // an outsider has one connection's worth anyway
		s.Reset()
		return
	}
	if _, busy := a.helloing.LoadOrStore(p, true); busy {
		s.Reset()
		return
	}
	defer a.helloing.Delete(p)
	_ = s.SetDeadline(time.Now().Add(a.d.Timeout))
	raw, err := msgio.NewVarintReaderSize(s, maxHelloSize).ReadMsg()
	if err != nil {
		a.d.Gate.Refuse(p, protocol.Reject(trust.CodeMalformed, "no hello: %v", err))
		s.Reset()
		return
	}
	if err := a.check(p, raw); err != nil {
		a.d.Gate.Refuse(p, err) // audited before the peer sees the reset
		s.Reset()
		return
	}
	hello, err := a.hello()
	if err == nil {
		err = msgio.NewVarintWriter(s).WriteMsg(hello)
	}
	if err != nil {
		s.Reset()
		return
	}
	s.Close()
	a.d.Exchanged(p) // both sides learn what the other knows
}

// Notifiee starts admission on every new connection: the dialer initiates,
// always; on an inbound connection the node waits AdmissionTimeout for the
// peer's hello and then closes the connection of a peer that has not
// proved itself. An inbound connection that ends without admission spends
// its source's budget.
func (a *Admission) Notifiee() network.Notifiee {
	return &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		p := c.RemotePeer()
		ctx := a.ctx
		if c.Stat().Direction == network.DirOutbound {
			go func() { _ = a.Admit(ctx, p) }()
			return
		}
		if a.d.Listed(p) {
			return
		}
		evict, ok := a.d.Gate.OpenPending(c, a.d.Timeout/4)
		if evict != nil {
			go evict.Close()
		}
		if !ok {
			_ = c.Close()
			return
		}
		go func() {
			t := time.NewTimer(a.d.Timeout)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if !a.d.Listed(p) {
				a.d.Gate.Refuse(p, protocol.Reject(protocol.CodeUnlisted, "no credential within %s", a.d.Timeout))
				return
			}
			a.d.Gate.Settled(c) // listed meanwhile (a record from gossip): not a failure
		}()
	}, DisconnectedF: func(nw network.Network, c network.Conn) {
		a.d.Gate.Closed(c) // closed before its peer was admitted: its source's failure
		if p := c.RemotePeer(); !a.d.Listed(p) && nw.Connectedness(p) != network.Connected {
			a.forget(p)
		}
	}}
}

// forget drops what the peerstore keeps of p (keys, addresses, protocols,
// metadata): an outsider's fresh key per connection would else stay for
// good.
func (a *Admission) forget(p peer.ID) {
	if h := a.d.Host(); h != nil {
		h.Peerstore().RemovePeer(p)
		h.Peerstore().ClearAddrs(p)
	}
}

// ForgetStrangers forgets every peer that is neither connected nor listed
// (once a heartbeat: identify may store a peer's addresses and protocols
// after its connection closed). Peers kept connected (bootstrap) stay.
func (a *Admission) ForgetStrangers() {
	h := a.d.Host()
	if h == nil {
		return
	}
	for _, p := range h.Peerstore().Peers() {
		if p != h.ID() && h.Network().Connectedness(p) != network.Connected && !a.d.Listed(p) && !h.ConnManager().IsProtected(p, "") {
			a.forget(p)
		}
	}
}
