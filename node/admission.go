package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// refuseFor is how long a peer that failed admission is refused by the
// connection gater before it may try again (with a valid credential).
const refuseFor = time.Minute

const maxHelloSize = trust.MaxCredentialSize + 64

// members is the node's gatekeeper: the connection gater, the admission
// protocol, and the protocol.Membership that the decision function asks on
// every envelope. The list of agents itself is the discovery registry.
type members struct {
	n       *Node
	mu      sync.RWMutex
	refused map[peer.ID]time.Time
	// rejections is each peer's rejection budget: every request or
	// message the decision function refuses for what the peer could have
	// avoided (not receiverSide) spends one. A peer that has
	// spent it is cut off (disconnected and refused for refuseFor) when the
	// rejection is hostile, and throttled otherwise: its requests are then
	// refused before any check until the budget refills, so that a flood
	// costs the node one check per request only up to the burst.
	rejections map[peer.ID]*budget
	throttles  atomic.Int64 // requests refused unchecked (Node.Throttled)
	admitting  singleflight.Group
	// admitted is closed (and replaced) at every admission, to wake the
	// streams waiting at the gate.
	admitted chan struct{}
	gated    atomic.Int64 // streams refused at the gate (Node.Gated)
	helloing sync.Map     // peers whose hello is being checked
	src      *sources
	streams  *streamCounts
}

// Flood limits: a peer may cause rejectBurst rejections at once and
// rejectRate per second after that.
const (
	rejectBurst = 100
	rejectRate  = 20
)

func newMembers(n *Node) *members {
	return &members{n: n, refused: map[peer.ID]time.Time{}, rejections: map[peer.ID]*budget{},
		admitted: make(chan struct{}), src: newSources(), streams: newStreamCounts()}
}

// hostile are the rejections that an honest agent does not cause by
// retrying (forgeries, tampering, impersonation, escalation, garbage). A
// peer past its budget is cut off for them; a dead, late or misconfigured
// agent that retries is only throttled.
//
// (weak_key is hostile from a direct sender, which built what it sends, but
// no forwarder's fault: an older node, which accepts small-order keys,
// relays in good faith.)
//
// A verdict that rests on the receiver's own configuration is not hostile:
// an anchor it does not trust yet (during a rotation), a depth limit lower
// than the sender's, a format version it does not speak (during an
// upgrade). Such a sender is only throttled.
var hostile = map[trust.Code]bool{
	trust.CodeBadSignature: true, trust.CodeMalformed: true, trust.CodeTooLarge: true,
	trust.CodeEscalation: true, trust.CodeWildcard: true, trust.CodeNotHolder: true, trust.CodeWeakKey: true,
	protocol.CodeImpersonation: true, protocol.CodeReplay: true, protocol.CodeWrongRecipient: true,
}

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

// receiverSide are the refusals that rest on the receiver's own capacity,
// or on its own view of time and of the mesh, which the sender can neither
// see nor avoid. They never spend the sender's rejection budget (penalize
// ignores them), so they never throttle it nor cut it off: issue 12's
// honest pair, whose replay_full refusals throttled the caller, stayed
// locked out for the rest of the replay window.
//
//   - busy, replay_full, full: the receiver is at capacity (its handlers,
//     its replay guard, a bounded store). An honest sender at full speed
//     meets them; the answer is back-pressure (busy says when to retry),
//     not blame.
//   - stale: the envelope's timestamp and the receiver's clock are more
//     than the window apart, and either clock may be the wrong one; a
//     receiver whose clock is off would throttle every sender.
//   - dead, unlisted: the receiver's registry does not hold the sender, or
//     a holder of its chain, alive and listed: its view of the mesh lags (a
//     heartbeat or a renewed credential not there yet, a partition on its
//     side) while the sender is alive and calling.
//   - no_handler, handler_error, unavailable: the receiver's own handlers
//     and connections (given after acceptance, or by the caller itself;
//     named so that no path ever charges them).
//
// The cost of not charging them: a sender that keeps meeting them is
// never slowed by its budget, but each refusal costs the node no more than
// an accepted call of the same sender would (stale, dead and unlisted come
// before the signature check; busy and replay_full after it, where an
// accepted call goes on to its handler), and accepted calls are bounded by
// the streams and MaxConcurrentCalls, not by the budget.
//
// Every other refusal is the sender's to avoid, whatever the receiver's
// state, and is charged: what it built or signed (hostile, and no_token,
// scope_not_granted, wrong_kind: it chose the token and the action), a
// token it holds that it should not use (expired or not_yet_valid by more
// than the clock skew the verifier allows, revoked: the revocation is the
// anchor's word), and the receiver's configuration (untrusted_root,
// too_deep, unsupported_version), which every retry meets again until an
// operator acts, so that the throttle only caps what a retrying sender
// costs.
var receiverSide = map[trust.Code]bool{
	protocol.CodeBusy: true, protocol.CodeReplayFull: true, trust.CodeFull: true,
	protocol.CodeStale: true, protocol.CodeDead: true, protocol.CodeUnlisted: true,
	protocol.CodeNoHandler: true, protocol.CodeHandlerError: true, protocol.CodeUnavailable: true,
}

// budget is one peer's rejection budget.
type budget struct {
	*rate.Limiter
	audited time.Time // when a throttle of this peer was last audited
}

// penalize spends one of p's rejection budget for a rejection with code,
// unless the code is receiverSide: those spend nothing. When that spends
// the budget, a hostile code cuts p off, and any other throttles it
// (audited at most once a second). It reports whether p was cut off.
func (m *members) penalize(p peer.ID, code trust.Code) bool {
	if receiverSide[code] {
		return false
	}
	m.mu.Lock()
	b, ok := m.rejections[p]
	if !ok {
		if len(m.rejections) > 10000 { // bounded: forget idle peers
			for q, qb := range m.rejections {
				if qb.Tokens() >= rejectBurst {
					delete(m.rejections, q)
				}
			}
		}
		b = &budget{Limiter: rate.NewLimiter(rejectRate, rejectBurst)}
		m.rejections[p] = b
	}
	b.Allow()
	spent := b.Tokens() < 1
	now := m.n.now()
	logIt := spent && !hostile[code] && now.Sub(b.audited) >= time.Second
	if logIt {
		b.audited = now
	}
	m.mu.Unlock()
	if spent && hostile[code] {
		m.refuse(p, protocol.Reject(protocol.CodeFlood, "more than %d rejected requests at once or %d per second", rejectBurst, rejectRate))
		return true
	}
	if logIt {
		r := m.n.record(audit.In, audit.Request, p.String())
		reject(&r, protocol.CodeFlood, fmt.Sprintf("throttled: more than %d rejected requests at once or %d per second; its requests are refused unchecked until fewer", rejectBurst, rejectRate))
		m.n.audit.Write(r)
	}
	return false
}

// Throttled returns how many requests this node refused unchecked because
// their sender had spent its rejection budget.
func (n *Node) Throttled() int64 { return n.members.throttles.Load() }

// ReplayNonces returns how many nonces the replay guard remembers: about
// the envelopes accepted over the last replay window (its memory is about
// 10 bytes each, at most 64 MiB).
func (n *Node) ReplayNonces() int { return n.decider.Replay.Len() }

// Gated returns how many streams this node refused, unread, because their
// peer had not been admitted.
func (n *Node) Gated() int64 { return n.members.gated.Load() }

// throttled reports whether p has spent its rejection budget: its request
// is then refused before any check (and counted, not audited one by one).
func (m *members) throttled(p peer.ID) bool {
	m.mu.RLock()
	b, ok := m.rejections[p]
	m.mu.RUnlock()
	if !ok || b.Tokens() >= 1 {
		return false
	}
	m.throttles.Add(1)
	return true
}

// credit returns how many more rejections p may cause before it is
// throttled, and false when it has never been charged (a full budget).
func (m *members) credit(p peer.ID) (int, bool) {
	m.mu.RLock()
	b, ok := m.rejections[p]
	m.mu.RUnlock()
	if !ok {
		return rejectBurst, false
	}
	return int(b.Tokens()), true
}

// Admit implements protocol.Membership by asking the registry.
func (m *members) Admit(sender trust.PublicKey, now time.Time) error {
	return m.n.registry.Admit(sender, now)
}

// AdmitHolder implements protocol.Membership by asking the registry.
func (m *members) AdmitHolder(holder trust.PublicKey, now time.Time) error {
	return m.n.registry.AdmitHolder(holder, now)
}

// isAdmitted reports whether p is listed in the registry.
func (m *members) isAdmitted(p peer.ID) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	return m.n.registry.State(k) != 0
}

func (m *members) isRefused(p peer.ID) bool {
	if f := m.n.cfg.PeerFilter; f != nil && !f(p) {
		return true
	}
	m.mu.RLock()
	until, ok := m.refused[p]
	m.mu.RUnlock()
	return ok && m.n.now().Before(until)
}

// refuse closes p's connections and makes the gater refuse it for a while.
func (m *members) refuse(p peer.ID, reason error) {
	now := m.n.now()
	m.mu.Lock()
	if len(m.refused) >= 1024 { // forget refusals that lapsed: a fresh key per attempt leaves one each
		for q, until := range m.refused {
			if !now.Before(until) {
				delete(m.refused, q)
			}
		}
	}
	m.refused[p] = now.Add(refuseFor)
	m.mu.Unlock()
	r := m.n.record(audit.In, audit.Admission, p.String())
	reject(&r, codeOrDefault(reason, protocol.CodeUnlisted), errDetail(reason))
	m.n.audit.Write(r)
	if h := m.n.Host(); h != nil {
		_ = h.Network().ClosePeer(p)
	}
}

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
	m.mu.Lock()
	delete(m.refused, p)
	m.mu.Unlock()
	if h := m.n.Host(); h != nil {
		m.src.admittedConns(h.Network().ConnsToPeer(p))
	}
	m.wakeWaiters()
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
	if err := m.check(p, raw); err != nil {
		s.Reset()
		m.refuse(p, err)
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
	if m.isRefused(p) {
		s.Reset()
		return
	}
	// An admitted peer that sends hello after hello on new streams gets a
	// few checked and then one a heartbeat (each costs a signature check
	// and an audit line).
	if m.isAdmitted(p) && !m.n.serveAllowed(p, protocol.ProtocolAdmission) { // an outsider has one connection's worth anyway
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
		m.refuse(p, protocol.Reject(trust.CodeMalformed, "no hello: %v", err))
		s.Reset()
		return
	}
	if err := m.check(p, raw); err != nil {
		m.refuse(p, err) // audited before the peer sees the reset
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
// its source's budget (gate.go).
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
		evict, ok := m.src.open(c, m.n.cfg.AdmissionTimeout/4)
		if evict != nil {
			m.src.fail(evict.RemoteMultiaddr())
			go evict.Close()
		}
		if !ok {
			m.src.fail(c.RemoteMultiaddr())
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
				m.refuse(p, protocol.Reject(protocol.CodeUnlisted, "no credential within %s", m.n.cfg.AdmissionTimeout))
				return
			}
			m.src.done(c) // listed meanwhile (a record from gossip): not a failure
		}()
	}, DisconnectedF: func(nw network.Network, c network.Conn) {
		if m.src.done(c) { // closed before its peer was admitted
			m.src.fail(c.RemoteMultiaddr())
		}
		if p := c.RemotePeer(); !m.isAdmitted(p) && nw.Connectedness(p) != network.Connected {
			m.forget(p)
		}
	}}
}

// forget drops what the peerstore keeps of p (keys, addresses, protocols,
// metadata): an outsider's fresh key per connection would else stay for
// good.
func (m *members) forget(p peer.ID) {
	if h := m.n.Host(); h != nil {
		h.Peerstore().RemovePeer(p)
		h.Peerstore().ClearAddrs(p)
	}
}

// forgetStrangers forgets every peer that is neither connected nor listed
// (once a heartbeat: identify may store a peer's addresses and protocols
// after its connection closed). Peers kept connected (bootstrap) stay.
func (m *members) forgetStrangers() {
	h := m.n.Host()
	if h == nil {
		return
	}
	for _, p := range h.Peerstore().Peers() {
		if p != h.ID() && h.Network().Connectedness(p) != network.Connected && !m.isAdmitted(p) && !h.ConnManager().IsProtected(p, "") {
			m.forget(p)
		}
	}
}

// Connection gater: a peer that failed admission is refused at dial time
// and right after the TLS handshake, where its peer ID is authenticated.
// (A source that spent its budget of failed admissions is refused before
// the handshake by the resource manager: gatedRcmgr.)
func (m *members) InterceptPeerDial(p peer.ID) bool                                { return !m.isRefused(p) }
func (m *members) InterceptAddrDial(peer.ID, ma.Multiaddr) bool                    { return true }
func (m *members) InterceptAccept(network.ConnMultiaddrs) bool                     { return true } // the source budget is in gatedRcmgr, which QUIC asks before its handshake too
func (m *members) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
func (m *members) InterceptSecured(dir network.Direction, p peer.ID, c network.ConnMultiaddrs) bool {
	if dir == network.DirInbound {
		m.src.secured(c.RemoteMultiaddr()) // the handshake is done: no longer in flight
	}
	if m.isRefused(p) {
		if dir == network.DirInbound {
			m.src.fail(c.RemoteMultiaddr())
		}
		return false
	}
	return true
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
