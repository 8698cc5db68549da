// Package gate is a node's admission gate and rejection budget: the
// connection gater, the resource manager's bounds per source and per peer
// (connections and streams awaiting admission), the wait every protocol
// handler but admission's does before it reads a byte, and each peer's
// budget of refusals it could have avoided, past which it is throttled or
// cut off. It knows the mesh only through Deps.
package gate

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Deps is what the gate needs of the node.
type Deps struct {
	// Listed reports whether the registry lists p: listed is admitted.
	Listed func(p peer.ID) bool
	// AdmissionTimeout is how long a connection has to pass admission.
	AdmissionTimeout time.Duration
	// Clock is the node's clock.
	Clock func() time.Time
	// Audit writes the record of a peer's cut-off or throttle (kind
	// admission or request) with reason's code and detail.
	Audit func(kind audit.Kind, p peer.ID, reason error)
	// ClosePeer closes p's connections.
	ClosePeer func(p peer.ID)
	// Blocked, when set, refuses p as a cut-off does (nil in production).
	Blocked func(p peer.ID) bool
}

// Gate is the admission gate. Its methods are safe for concurrent use.
//
// Locks: mu, sources.mu and streamCounts.mu are never held together, and
// none is held while Deps are called, except Listed and Clock (which take
// only the registry's lock). Refuse calls ClosePeer from pubsub's event
// loop: ClosePeer must take no lock that is held while waiting on it.
type Gate struct {
	d       Deps
	mu      sync.RWMutex
	refused map[peer.ID]time.Time
	// rejections is each peer's rejection budget: every request or
	// message the decision function refuses for what the peer could have
	// avoided (not receiverSide) spends one. A peer that has spent it is
	// cut off (disconnected and refused for refuseFor) when the rejection
	// is hostile, and throttled otherwise: its requests are then refused
	// before any check until the budget refills, so that a flood costs
	// the node one check per request only up to the burst.
	rejections map[peer.ID]*budget
	throttles  atomic.Int64 // requests refused unchecked
	// admitted is closed (and replaced) at every admission, to wake the
	// streams waiting at the gate.
	admitted chan struct{}
	gated    atomic.Int64 // streams and connections refused at the gate
	src      *sources
	streams  *streamCounts
}

// New returns a gate.
func New(d Deps) *Gate {
	return &Gate{d: d, refused: map[peer.ID]time.Time{}, rejections: map[peer.ID]*budget{},
		admitted: make(chan struct{}), src: newSources(), streams: newStreamCounts()}
}

// Gated returns how many streams and connections the gate refused unread.
func (g *Gate) Gated() int64 { return g.gated.Load() }

// CountGated counts one more stream refused at the gate (by the node's
// own checks, such as pubsub's).
func (g *Gate) CountGated() { g.gated.Add(1) }

// Throttles returns how many requests and messages were refused unchecked
// because their sender had spent its budget.
func (g *Gate) Throttles() int64 { return g.throttles.Load() }

// CountThrottle counts one more.
func (g *Gate) CountThrottle() { g.throttles.Add(1) }

// Forgive forgets p's refusal: its admission passed.
func (g *Gate) Forgive(p peer.ID) {
	g.mu.Lock()
	delete(g.refused, p)
	g.mu.Unlock()
}

// OpenPending notes a new inbound connection awaiting admission (see
// sources.open): false means close it; evict, when set, is a pending
// connection it takes the place of, already counted as its source's
// failure, for the caller to close.
func (g *Gate) OpenPending(c network.Conn, grace time.Duration) (evict network.Conn, ok bool) {
	evict, ok = g.src.open(c, grace)
	if evict != nil {
		g.src.fail(evict.RemoteMultiaddr())
	}
	if !ok {
		g.src.fail(c.RemoteMultiaddr())
	}
	return evict, ok
}

// Settled notes that c was admitted (or its peer listed); it is no longer
// pending.
func (g *Gate) Settled(c network.Conn) { g.src.done(c) }

// Closed notes that c closed; one that was pending spends its source's
// budget.
func (g *Gate) Closed(c network.Conn) {
	if g.src.done(c) {
		g.src.fail(c.RemoteMultiaddr())
	}
}

// AdmittedConns marks every pending connection of an admitted peer as
// settled.
func (g *Gate) AdmittedConns(conns []network.Conn) { g.src.admittedConns(conns) }

// refuseFor is how long a peer that failed admission is refused by the
// connection gater before it may try again (with a valid credential).
const refuseFor = time.Minute

// Flood limits: a peer may cause RejectBurst rejections at once and
// RejectRate per second after that.
const (
	RejectBurst = 100
	RejectRate  = 20
)

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
// Hostile reports whether code is hostile.
func Hostile(code trust.Code) bool { return hostile[code] }

// ReceiverSideCodes lists the receiverSide codes.
func ReceiverSideCodes() []trust.Code {
	out := make([]trust.Code, 0, len(receiverSide))
	for c := range receiverSide {
		out = append(out, c)
	}
	return out
}

// ReceiverSide reports whether code is one of them.
func ReceiverSide(code trust.Code) bool { return receiverSide[code] }

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

// Penalize spends one of p's rejection budget for a rejection with code,
// unless the code is receiverSide: those spend nothing. When that spends
// the budget, a hostile code cuts p off, and any other throttles it
// (audited at most once a second). It reports whether p was cut off.
func (g *Gate) Penalize(p peer.ID, code trust.Code) bool {
	if receiverSide[code] {
		return false
	}
	g.mu.Lock()
	b, ok := g.rejections[p]
	if !ok {
		if len(g.rejections) > 10000 { // bounded: forget idle peers
			for q, qb := range g.rejections {
				if qb.Tokens() >= RejectBurst {
					delete(g.rejections, q)
				}
			}
		}
		b = &budget{Limiter: rate.NewLimiter(RejectRate, RejectBurst)}
		g.rejections[p] = b
	}
	b.Allow()
	spent := b.Tokens() < 1
	now := g.d.Clock()
	logIt := spent && !hostile[code] && now.Sub(b.audited) >= time.Second
	if logIt {
		b.audited = now
	}
	g.mu.Unlock()
	if spent && hostile[code] {
		g.Refuse(p, protocol.Reject(protocol.CodeFlood, "more than %d rejected requests at once or %d per second", RejectBurst, RejectRate))
		return true
	}
	if logIt {
		g.d.Audit(audit.Request, p, protocol.Reject(protocol.CodeFlood, "throttled: more than %d rejected requests at once or %d per second; its requests are refused unchecked until fewer", RejectBurst, RejectRate))
	}
	return false
}

// Throttled reports whether p has spent its rejection budget: its request
// is then refused before any check (and counted, not audited one by one).
func (g *Gate) Throttled(p peer.ID) bool {
	g.mu.RLock()
	b, ok := g.rejections[p]
	g.mu.RUnlock()
	if !ok || b.Tokens() >= 1 {
		return false
	}
	g.throttles.Add(1)
	return true
}

// Credit returns how many more rejections p may cause before it is
// throttled, and false when it has never been charged (a full budget).
func (g *Gate) Credit(p peer.ID) (int, bool) {
	g.mu.RLock()
	b, ok := g.rejections[p]
	g.mu.RUnlock()
	if !ok {
		return RejectBurst, false
	}
	return int(b.Tokens()), true
}

// Refused reports whether p is refused: cut off lately, or blocked.
func (g *Gate) Refused(p peer.ID) bool {
	if f := g.d.Blocked; f != nil && f(p) {
		return true
	}
	g.mu.RLock()
	until, ok := g.refused[p]
	g.mu.RUnlock()
	return ok && g.d.Clock().Before(until)
}

// Refuse closes p's connections and makes the gater refuse it for a while.
func (g *Gate) Refuse(p peer.ID, reason error) {
	now := g.d.Clock()
	g.mu.Lock()
	if len(g.refused) >= 1024 { // forget refusals that lapsed: a fresh key per attempt leaves one each
		for q, until := range g.refused {
			if !now.Before(until) {
				delete(g.refused, q)
			}
		}
	}
	g.refused[p] = now.Add(refuseFor)
	g.mu.Unlock()
	g.d.Audit(audit.Admission, p, reason)
	if g.d.ClosePeer != nil {
		g.d.ClosePeer(p)
	}
}

// Connection gater: a peer that failed admission is refused at dial time
// and right after the TLS handshake, where its peer ID is authenticated.
// (A source that spent its budget of failed admissions is refused before
// the handshake by the resource manager: gatedRcmgr.)
func (g *Gate) InterceptPeerDial(p peer.ID) bool                                { return !g.Refused(p) }
func (g *Gate) InterceptAddrDial(peer.ID, ma.Multiaddr) bool                    { return true }
func (g *Gate) InterceptAccept(network.ConnMultiaddrs) bool                     { return true } // the source budget is in gatedRcmgr, which QUIC asks before its handshake too
func (g *Gate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
func (g *Gate) InterceptSecured(dir network.Direction, p peer.ID, c network.ConnMultiaddrs) bool {
	if dir == network.DirInbound {
		g.src.secured(c.RemoteMultiaddr()) // the handshake is done: no longer in flight
	}
	if g.Refused(p) {
		if dir == network.DirInbound {
			g.src.fail(c.RemoteMultiaddr())
		}
		return false
	}
	return true
}

// The admission gate. A peer that completed TLS but not admission (its
// hello verified, or its record listed) gets nothing of the mesh: every
// protocol handler but admission's waits for the gate before it reads a
// byte, and the pubsub router only opens or reads a stream to a peer
// that passed it. An outsider that never sends a hello is closed at the
// admission deadline, and so are the streams it opened.

// gateWait bounds how long a stream from a peer whose admission is under
// way waits for it, in admission timeouts (the connection of a peer that
// has not passed by then is being closed anyway).
const gateWait = 2

// Wait reports whether p passes the gate: at once when the registry
// lists it, else when its admission completes within the wait, while c
// (when given) is open. It holds no lock while it waits.
func (g *Gate) Wait(ctx context.Context, p peer.ID, c network.Conn) bool {
	if g.d.Listed(p) {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, gateWait*g.d.AdmissionTimeout)
	defer cancel()
	// A record learned from gossip lists a peer without an admission on
	// this connection: look again now and then, not only on admissions.
	poll := time.NewTicker(min(g.d.AdmissionTimeout/10, 100*time.Millisecond))
	defer poll.Stop()
	for {
		g.mu.RLock()
		wake := g.admitted
		g.mu.RUnlock()
		if g.d.Listed(p) {
			return true
		}
		if c != nil && c.IsClosed() {
			return false
		}
		select {
		case <-ctx.Done():
			return g.d.Listed(p)
		case <-wake:
		case <-poll.C:
		}
	}
}

// Wake tells every stream waiting at the gate that an admission
// completed.
func (g *Gate) Wake() {
	g.mu.Lock()
	close(g.admitted)
	g.admitted = make(chan struct{})
	g.mu.Unlock()
}

// Wrap wraps a stream handler: the handler runs only once the stream's
// peer passed the gate; otherwise the stream is reset unread. ctx is the
// node's: waits end with it.
func (g *Gate) Wrap(ctx context.Context, h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		if !g.Wait(ctx, s.Conn().RemotePeer(), s.Conn()) {
			g.gated.Add(1)
			s.Reset()
			return
		}
		h(s)
	}
}

// gatedHost is the host as the pubsub router sees it: its outbound streams
// open, and its inbound ones are read, only once the peer passed the gate,
// so that no subscription, message or gossip reaches a peer before its
// admission and nothing it sends is processed.
type gatedHost struct {
	host.Host
	g   *Gate
	ctx context.Context
}

// Host returns h as the pubsub router must see it (gatedHost). ctx is the
// node's.
func (g *Gate) Host(ctx context.Context, h host.Host) host.Host {
	return gatedHost{Host: h, g: g, ctx: ctx}
}

func (g gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...p2pprotocol.ID) (network.Stream, error) {
	if !g.g.Wait(ctx, p, nil) {
		g.g.gated.Add(1)
		return nil, ErrNotAdmitted
	}
	return g.Host.NewStream(ctx, p, pids...)
}

func (g gatedHost) SetStreamHandler(pid p2pprotocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.g.Wrap(g.ctx, h))
}

func (g gatedHost) SetStreamHandlerMatch(pid p2pprotocol.ID, match func(p2pprotocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, match, g.g.Wrap(g.ctx, h))
}

// gatedRcmgr is the resource manager with the per-source budget in front:
// an inbound connection is opened (before its handshake, on TCP and on
// QUIC alike) only while its source's budget covers it.
type gatedRcmgr struct {
	network.ResourceManager
	g *Gate
}

// ResourceManager returns rm with the gate's bounds in front (gatedRcmgr).
func (g *Gate) ResourceManager(rm network.ResourceManager) network.ResourceManager {
	return gatedRcmgr{ResourceManager: rm, g: g}
}

func (g gatedRcmgr) OpenConnection(dir network.Direction, usefd bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	if dir != network.DirInbound || endpoint == nil {
		return g.ResourceManager.OpenConnection(dir, usefd, endpoint)
	}
	if !g.g.src.allow(endpoint) {
		g.g.gated.Add(1)
		return nil, errSourceSpent
	}
	scope, err := g.ResourceManager.OpenConnection(dir, usefd, endpoint)
	if err != nil {
		g.g.src.secured(endpoint) // not opened: not in flight either
	}
	return scope, err
}

// Inbound stream bounds, kept before the resource manager's own: a peer
// not admitted yet may hold unadmittedStreams inbound streams (an honest
// newcomer opens admission and identify), and any peer unnegotiated
// streams that have not named their protocol yet (they hold the
// node-wide transient slots, 2 048, until they do, or until libp2p's 10 s
// negotiation timeout; an honest caller that opens a hundred calls at
// once has them all in negotiation for a moment).
const (
	unadmittedStreams = 8
	unnegotiated      = 128
)

// streamCounts are the inbound streams of each peer that the bounds above
// count.
type streamCounts struct {
	mu           sync.Mutex
	unadmitted   map[peer.ID]int
	unnegotiated map[peer.ID]int
}

func newStreamCounts() *streamCounts {
	return &streamCounts{unadmitted: map[peer.ID]int{}, unnegotiated: map[peer.ID]int{}}
}

// OpenStream refuses an inbound stream past the bounds above (libp2p then
// resets it unread), and counts the streams it lets through until they
// negotiate a protocol, and, for a peer not admitted, until they end.
func (g gatedRcmgr) OpenStream(p peer.ID, dir network.Direction) (network.StreamManagementScope, error) {
	if dir != network.DirInbound {
		return g.ResourceManager.OpenStream(p, dir)
	}
	c := g.g.streams
	outsider := !g.g.d.Listed(p)
	c.mu.Lock()
	if (outsider && c.unadmitted[p] >= unadmittedStreams) || c.unnegotiated[p] >= unnegotiated {
		c.mu.Unlock()
		g.g.gated.Add(1)
		return nil, errStreamLimit
	}
	c.unnegotiated[p]++
	if outsider {
		c.unadmitted[p]++
	}
	c.mu.Unlock()
	scope, err := g.ResourceManager.OpenStream(p, dir)
	if err != nil {
		c.release(p, true, outsider)
		return nil, err
	}
	return &countedStream{StreamManagementScope: scope, c: c, p: p, pending: true, outsider: outsider}, nil
}

func (c *streamCounts) release(p peer.ID, negotiating, outsider bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dec := func(m map[peer.ID]int) {
		if m[p]--; m[p] <= 0 {
			delete(m, p)
		}
	}
	if negotiating {
		dec(c.unnegotiated)
	}
	if outsider {
		dec(c.unadmitted)
	}
}

// countedStream is a stream's scope that reports its negotiation and its
// end to the counts.
type countedStream struct {
	network.StreamManagementScope
	c                 *streamCounts
	p                 peer.ID
	mu                sync.Mutex
	pending, outsider bool
}

func (s *countedStream) SetProtocol(proto p2pprotocol.ID) error {
	err := s.StreamManagementScope.SetProtocol(proto)
	s.mu.Lock()
	negotiated := s.pending
	s.pending = false
	s.mu.Unlock()
	if negotiated {
		s.c.release(s.p, true, false)
	}
	return err
}

func (s *countedStream) Done() {
	s.mu.Lock()
	pending, outsider := s.pending, s.outsider
	s.pending, s.outsider = false, false
	s.mu.Unlock()
	s.c.release(s.p, pending, outsider)
	s.StreamManagementScope.Done()
}

var errStreamLimit = errors.New("gate: too many streams from this peer")

// VerifySourceAddress makes QUIC validate every source's address (a Retry
// round trip, before the connection is opened and counted): a QUIC
// Initial can carry a forged source address, and without it one could
// spend an honest agent's budget, or fill the table of sources, from
// addresses it does not hold. The cost: one round trip more for each new
// inbound QUIC connection.
func (g gatedRcmgr) VerifySourceAddress(net.Addr) bool { return true }

// GetConnLimit passes libp2p's check of the connection manager's limits
// through to the wrapped manager.
func (g gatedRcmgr) GetConnLimit() int {
	if l, ok := g.ResourceManager.(interface{ GetConnLimit() int }); ok {
		return l.GetConnLimit()
	}
	return 0
}

var errSourceSpent = errors.New("gate: this source failed admission too often; try again later")

type gateError struct{}

func (gateError) Error() string { return "node: peer not admitted" }

// ErrNotAdmitted is the error of a stream refused at the gate.
var ErrNotAdmitted error = gateError{}

// Per-source budget of failed admissions. Each connection that ends
// without admission (no hello, a refused hello) spends one of its source
// IP's budget; a source whose budget does not cover its connections in
// flight (handshakes under way and connections awaiting admission, each of
// which may yet fail) is refused before the TLS handshake. An outsider
// that re-dials with fresh keys thus costs the node at most sourceBurst
// handshakes at once and sourceRate a second, whatever keys it uses, in
// sequence or in parallel; an honest agent, which is admitted, spends
// nothing.
const (
	sourceBurst = 64
	sourceRate  = 16
	// pendingPerSource bounds the connections of one IP that have not
	// been admitted yet; more are closed at once. (allow keeps them under
	// the budget before the handshake; this holds after it, for QUIC,
	// whose listener asks the gater only once the handshake is done.)
	pendingPerSource = sourceBurst
	// handshakeFor is how long an accepted connection counts as a
	// handshake under way when it never reports back (a failed handshake
	// has no callback).
	handshakeFor = 15 * time.Second
)

// source is what the node keeps of one IP.
type source struct {
	budget   *rate.Limiter // failed admissions
	pending  int           // connections awaiting admission
	inflight []time.Time   // handshakes accepted and not yet connected
}

// sources tracks each source IP's failed admissions and connections in
// flight. Entries go once the source has nothing in flight and a full
// budget; there are at most maxSources.
type sources struct {
	mu    sync.Mutex
	m     map[netip.Addr]*source
	conns map[network.Conn]pendingConn // inbound connections awaiting admission
	swept time.Time                    // when a full table was last swept
}

type pendingConn struct {
	ip      netip.Addr
	at      time.Time
	tracked bool // counted in its source's entry
}

// maxPending bounds the inbound connections awaiting admission node-wide,
// from any number of sources: far below the node's inbound connection
// limit, so that admitted agents always find room. When it is reached, a
// new connection takes the place of the oldest pending one that has had
// its grace to send its hello (an honest newcomer sends it within a round
// trip), of the source with the most pending, never a source's only one;
// else the new one is closed.
const maxPending = 128

const maxSources = 4096

func newSources() *sources {
	return &sources{m: map[netip.Addr]*source{}, conns: map[network.Conn]pendingConn{}}
}

func sourceOf(a ma.Multiaddr) (netip.Addr, bool) {
	ip, err := manet.ToIP(a)
	if err != nil {
		return netip.Addr{}, false
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	addr = addr.Unmap()
	if addr.Is6() { // one budget per /64: an IPv6 host has many addresses
		addr = netip.PrefixFrom(addr, 64).Masked().Addr()
	}
	return addr, true
}

// getLocked returns ip's entry, making one; nil when the table is full of
// busy sources (it then forgets idle ones at most once a second). A source
// without an entry is not bounded per source, only by the node's
// connection limits: with thousands of sources at once, the per-source
// bound means little, and refusing every new source instead would lock
// honest agents out.
func (s *sources) getLocked(ip netip.Addr, create bool) *source {
	if e := s.m[ip]; e != nil || !create {
		return e
	}
	if len(s.m) >= maxSources {
		now := time.Now()
		if now.Sub(s.swept) < time.Second {
			return nil
		}
		s.swept = now
		for q, e := range s.m {
			e.expireLocked(now)
			if e.idle() {
				delete(s.m, q)
			}
		}
		if len(s.m) >= maxSources {
			return nil
		}
	}
	e := &source{budget: rate.NewLimiter(sourceRate, sourceBurst)}
	s.m[ip] = e
	return e
}

func (e *source) idle() bool {
	return e.pending == 0 && len(e.inflight) == 0 && e.budget.Tokens() >= sourceBurst
}

func (e *source) expireLocked(now time.Time) {
	i := 0
	for i < len(e.inflight) && now.Sub(e.inflight[i]) > handshakeFor {
		i++
	}
	e.inflight = e.inflight[i:]
}

// allow reports whether a new connection from a may start its handshake:
// its source's budget must cover it and every connection of the source in
// flight. If so, the connection counts in flight until its handshake is
// done (secured) or handshakeFor passed.
func (s *sources) allow(a ma.Multiaddr) bool {
	ip, ok := sourceOf(a)
	if !ok {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.getLocked(ip, true)
	if e == nil {
		return true // untracked: the table is full of busy sources
	}
	now := time.Now()
	e.expireLocked(now)
	if e.budget.Tokens()-float64(e.pending+len(e.inflight)) < 1 {
		return false
	}
	e.inflight = append(e.inflight, now)
	return true
}

// fail spends one of a's budget.
func (s *sources) fail(a ma.Multiaddr) {
	ip, ok := sourceOf(a)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.getLocked(ip, true); e != nil {
		e.budget.Allow()
	}
}

// secured notes that an inbound connection from a finished its handshake
// (or was refused right after it): it is no longer in flight.
func (s *sources) secured(a ma.Multiaddr) {
	ip, ok := sourceOf(a)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[ip]; e != nil && len(e.inflight) > 0 {
		e.inflight = e.inflight[1:]
	}
}

// open notes a new inbound connection awaiting admission. It reports false
// when its source already has pendingPerSource of them, or when the node
// has maxPending and none of them is older than grace; else it returns the
// pending connection c takes the place of, if any, for the caller to close.
func (s *sources) open(c network.Conn, grace time.Duration) (evict network.Conn, ok bool) {
	ip, ok := sourceOf(c.RemoteMultiaddr())
	if !ok {
		return nil, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	e := s.getLocked(ip, true) // nil: untracked, the table is full of busy sources
	if e != nil && e.pending >= pendingPerSource {
		return nil, false
	}
	if len(s.conns) >= maxPending {
		// Of those past their grace, the oldest of the source with the
		// most pending: a flood's, not a newcomer's from its own address.
		var victim network.Conn
		most := -1
		for q, pc := range s.conns {
			if now.Sub(pc.at) < grace {
				continue
			}
			k := 0
			if e := s.m[pc.ip]; pc.tracked && e != nil {
				k = e.pending
			}
			if k < 2 {
				continue // its source's only one: a newcomer's, perhaps
			}
			if k > most || (k == most && pc.at.Before(s.conns[victim].at)) {
				victim, most = q, k
			}
		}
		if victim == nil {
			return nil, false
		}
		evict = victim
		s.doneLocked(victim) // the caller closes it: a failed admission of its source
	}
	pc := pendingConn{ip: ip, at: now}
	if e != nil {
		e.pending++
		pc.tracked = true
	}
	s.conns[c] = pc
	return evict, true
}

// done notes that c was admitted or closed; it reports whether c was
// pending.
func (s *sources) done(c network.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doneLocked(c)
}

func (s *sources) doneLocked(c network.Conn) bool {
	pc, ok := s.conns[c]
	if !ok {
		return false
	}
	delete(s.conns, c)
	if e := s.m[pc.ip]; pc.tracked && e != nil && e.pending > 0 {
		e.pending--
	}
	return true
}

// admittedConns marks every pending connection of p as admitted.
func (s *sources) admittedConns(conns []network.Conn) {
	for _, c := range conns {
		s.done(c)
	}
}
