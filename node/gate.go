package node

import (
	"context"
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

type gateError struct{}

func (gateError) Error() string { return "node: peer not admitted" }

var errNotAdmitted error = gateError{}

// Per-source budget of failed admissions. Each connection that ends
// without admission (no hello, a refused hello) spends one of its source
// IP's budget; an IP that spent it is refused before the TLS handshake
// until the budget refills. An outsider that re-dials with fresh keys
// thus costs the node at most sourceBurst handshakes at once and
// sourceRate a second, whatever keys it uses; an honest agent, which is
// admitted, spends nothing.
const (
	sourceBurst = 64
	sourceRate  = 16
	// pendingPerSource bounds the connections of one IP that have not
	// been admitted yet; more are closed at once.
	pendingPerSource = 128
)

// sources tracks each source IP's failed admissions and pending
// connections.
type sources struct {
	mu      sync.Mutex
	budget  map[netip.Addr]*rate.Limiter
	pending map[netip.Addr]int
	conns   map[network.Conn]netip.Addr // pending inbound connections
}

func newSources() *sources {
	return &sources{budget: map[netip.Addr]*rate.Limiter{}, pending: map[netip.Addr]int{}, conns: map[network.Conn]netip.Addr{}}
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

// allow reports whether a new connection from a may start its handshake.
func (s *sources) allow(a ma.Multiaddr) bool {
	ip, ok := sourceOf(a)
	if !ok {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.budget[ip]
	return b == nil || b.Tokens() >= 1
}

// fail spends one of a's budget.
func (s *sources) fail(a ma.Multiaddr) {
	ip, ok := sourceOf(a)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.budget[ip]
	if b == nil {
		if len(s.budget) >= 4096 { // bounded: forget sources that refilled
			for q, qb := range s.budget {
				if qb.Tokens() >= sourceBurst {
					delete(s.budget, q)
				}
			}
		}
		b = rate.NewLimiter(sourceRate, sourceBurst)
		s.budget[ip] = b
	}
	b.Allow()
}

// open notes a new inbound connection awaiting admission; it reports false
// when its source already has pendingPerSource of them.
func (s *sources) open(c network.Conn) bool {
	ip, ok := sourceOf(c.RemoteMultiaddr())
	if !ok {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[ip] >= pendingPerSource {
		return false
	}
	s.pending[ip]++
	s.conns[c] = ip
	return true
}

// done notes that c was admitted or closed; it reports whether c was
// pending.
func (s *sources) done(c network.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ip, ok := s.conns[c]
	if !ok {
		return false
	}
	delete(s.conns, c)
	if s.pending[ip]--; s.pending[ip] <= 0 {
		delete(s.pending, ip)
	}
	return true
}

// admittedConns marks every pending connection of p as admitted.
func (s *sources) admittedConns(conns []network.Conn) {
	for _, c := range conns {
		s.done(c)
	}
}
