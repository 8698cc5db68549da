package node

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"golang.org/x/time/rate"
)

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

// waitAdmitted reports whether p passes the gate: at once when the registry
// lists it, else when its admission completes within the wait, while c
// (when given) is open. It holds no lock while it waits.
func (m *members) waitAdmitted(ctx context.Context, p peer.ID, c network.Conn) bool {
	if m.isAdmitted(p) {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, gateWait*m.n.cfg.AdmissionTimeout)
	defer cancel()
	// A record learned from gossip lists a peer without an admission on
	// this connection: look again now and then, not only on admissions.
	poll := time.NewTicker(min(m.n.cfg.AdmissionTimeout/10, 100*time.Millisecond))
	defer poll.Stop()
	for {
		m.mu.RLock()
		wake := m.admitted
		m.mu.RUnlock()
		if m.isAdmitted(p) {
			return true
		}
		if c != nil && c.IsClosed() {
			return false
		}
		select {
		case <-ctx.Done():
			return m.isAdmitted(p)
		case <-wake:
		case <-poll.C:
		}
	}
}

// wakeWaiters tells every stream waiting at the gate that an admission
// completed.
func (m *members) wakeWaiters() {
	m.mu.Lock()
	close(m.admitted)
	m.admitted = make(chan struct{})
	m.mu.Unlock()
}

// gate wraps a stream handler: the handler runs only once the stream's
// peer passed the gate; otherwise the stream is reset unread.
func (m *members) gate(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		if !m.waitAdmitted(m.n.ctx, s.Conn().RemotePeer(), s.Conn()) {
			m.gated.Add(1)
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
	m *members
}

func (g gatedHost) NewStream(ctx context.Context, p peer.ID, pids ...p2pprotocol.ID) (network.Stream, error) {
	if !g.m.waitAdmitted(ctx, p, nil) {
		g.m.gated.Add(1)
		return nil, errNotAdmitted
	}
	return g.Host.NewStream(ctx, p, pids...)
}

func (g gatedHost) SetStreamHandler(pid p2pprotocol.ID, h network.StreamHandler) {
	g.Host.SetStreamHandler(pid, g.m.gate(h))
}

func (g gatedHost) SetStreamHandlerMatch(pid p2pprotocol.ID, match func(p2pprotocol.ID) bool, h network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, match, g.m.gate(h))
}

// gatedRcmgr is the resource manager with the per-source budget in front:
// an inbound connection is opened (before its handshake, on TCP and on
// QUIC alike) only while its source's budget covers it.
type gatedRcmgr struct {
	network.ResourceManager
	m *members
}

func (g gatedRcmgr) OpenConnection(dir network.Direction, usefd bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	if dir != network.DirInbound || endpoint == nil {
		return g.ResourceManager.OpenConnection(dir, usefd, endpoint)
	}
	if !g.m.src.allow(endpoint) {
		g.m.gated.Add(1)
		return nil, errSourceSpent
	}
	scope, err := g.ResourceManager.OpenConnection(dir, usefd, endpoint)
	if err != nil {
		g.m.src.secured(endpoint) // not opened: not in flight either
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
	c := g.m.streams
	outsider := !g.m.isAdmitted(p)
	c.mu.Lock()
	if (outsider && c.unadmitted[p] >= unadmittedStreams) || c.unnegotiated[p] >= unnegotiated {
		c.mu.Unlock()
		g.m.gated.Add(1)
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

var errStreamLimit = errors.New("node: too many streams from this peer")

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

var errSourceSpent = errors.New("node: this source failed admission too often; try again later")

type gateError struct{}

func (gateError) Error() string { return "node: peer not admitted" }

var errNotAdmitted error = gateError{}

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
