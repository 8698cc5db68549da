//go:build meshsim

package simulations

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// ResourceAttacks are the attacks of issue 11 (bounded under attack) that a
// process can play against a node: each tries to make the target hold
// connections, streams, memory, CPU or audit bytes, rather than to pass a
// trust check, so the target need not reject each attempt with one code;
// it must bound what the attacker makes it hold. They are not in Attacks
// (make sim's report); SeparateResourceAttacks plays them and measures the
// target (make bench-attacks).
//
// Outsiders are plain libp2p hosts (TLS, a fresh Ed25519 key each, no
// resource manager of their own) dialing from 4 loopback addresses of
// their attack's own (127.0.10+i.1 to .4, i the attack's index here):
// beyond one address's budget of failed admissions, and beyond the
// node-wide bound of connections awaiting admission, as a small botnet.
// The insider of "insider-streams" and "subscription-flood" is the
// attacker's enrolled identity on such a host (from 127.0.10+i.9),
// admitted by a hello sent by hand: no pubsub router, no stream limits.
// The other insider attacks use the attacker's node.
var ResourceAttacks = []Attack{
	{"silent-conns", "", "fresh-key outsiders that connect and stay silent until closed (up to 512 held)"},
	{"rpc-streams", "", "fresh-key outsiders, each holding 16 RPC streams whose frame header claims 256 KiB"},
	{"unnegotiated-streams", "", "fresh-key outsiders, each holding 64 streams that never name a protocol"},
	{"dial-loop", "", "a fresh key every attempt: connect, garbage hello on the admission protocol, close"},
	{"insider-streams", "", "the insider holding RPC streams with a partial frame (header claims 256 KiB; up to 4096 held)"},
	{"control-actions", "", "the insider's requests whose action is 64 KiB of control characters"},
	{"renew-loop", "", "the insider's renewal requests in a loop"},
	{"sync-loop", "", "the insider's sync requests in a loop"},
	{"subscription-flood", "", "the insider's pubsub RPCs of 250 made-up topics each, on a stream of its own"},
	{"nonce-flood", "", "the insider's valid requests, a fresh nonce each, as fast as it signs (issue 12: every one accepted and its nonce kept; no handler)"},
	// Not an attack: what an attacker process costs the honest agents
	// when it sends nothing, only takes what CPU its class gets.
	{"control-spin", "", "no attack: the attacker process spins on 4 goroutines and sends nothing"},
}

// isResourceAttack reports whether a is one of ResourceAttacks.
func isResourceAttack(a string) bool {
	return slices.ContainsFunc(ResourceAttacks, func(r Attack) bool { return r.Name == a })
}

// ownHosts are the attacks played from hosts of their own (or none): the
// attacker's node stays unconnected, so that the target sees only what
// they send.
var ownHosts = map[string]bool{"silent-conns": true, "rpc-streams": true, "unnegotiated-streams": true,
	"dial-loop": true, "insider-streams": true, "subscription-flood": true, "control-spin": true}

// meshsub is the gossipsub protocol the insider writes to by hand.
const meshsub = "/meshsub/1.1.0"

// claim is the start of a frame whose header claims the largest envelope
// and which never ends.
var claim = append(binary.AppendUvarint(nil, protocol.DefaultMaxEnvelopeSize), make([]byte, 1024)...)

// resourceAttempt returns the attempt function of resource attack a (see
// kit.attempt). Every attempt that got past the attacker's own dial, open
// or write counts in k.landed; the target may still refuse it.
func (k *kit) resourceAttempt(ctx context.Context, a string) (func(), error) {
	i := slices.IndexFunc(ResourceAttacks, func(r Attack) bool { return r.Name == a })
	if i < 0 {
		return nil, fmt.Errorf("no attack named %q", a)
	}
	src := newSourceIPs(i)
	switch a {
	case "silent-conns":
		hd := k.newHeld(512)
		return func() {
			x := hd.take(k)
			if x == nil {
				return
			}
			h := k.outsider(ctx, src.next())
			if h == nil {
				x.release()
				return
			}
			k.landed.Add(1)
			x.keep(func() { _ = h.Close() })
			releaseOnClose(h, k, x)
		}, nil
	case "rpc-streams", "unnegotiated-streams":
		per := 16
		if a == "unnegotiated-streams" {
			per = 64
		}
		hd := k.newHeld(256)
		return func() {
			x := hd.take(k)
			if x == nil {
				return
			}
			h := k.outsider(ctx, src.next())
			if h == nil {
				x.release()
				return
			}
			x.keep(func() { _ = h.Close() })
			releaseOnClose(h, k, x)
			for range per {
				c, cancel := context.WithTimeout(ctx, 5*time.Second)
				var err error
				if a == "rpc-streams" {
					var s network.Stream
					if s, err = h.NewStream(c, k.tid, wire.ProtocolRPC); err == nil {
						_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
						_, err = s.Write(claim)
					}
				} else {
					_, err = h.Network().NewStream(c, k.tid) // no protocol, ever
				}
				cancel()
				if err != nil {
					return
				}
				k.landed.Add(1)
			}
		}, nil
	case "dial-loop":
		return func() {
			h := k.outsider(ctx, src.next())
			if h == nil {
				return
			}
			defer h.Close()
			k.landed.Add(1)
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if s, err := h.NewStream(c, k.tid, wire.ProtocolAdmission); err == nil {
				_ = s.SetDeadline(time.Now().Add(10 * time.Second))
				_ = msgio.NewVarintWriter(s).WriteMsg([]byte("not a hello"))
				_, _ = s.Read(make([]byte, 1)) // until the target resets it
			}
		}, nil
	case "insider-streams":
		in, err := k.newInsider(src.insider)
		if err != nil {
			return nil, err
		}
		hd := k.newHeld(4096)
		return func() {
			x := hd.take(k)
			if x == nil {
				return
			}
			s, err := in.stream(ctx, k, wire.ProtocolRPC)
			if err == nil {
				_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err = s.Write(claim); err != nil {
					_ = s.Reset()
				}
			}
			if err != nil {
				x.release()
				return
			}
			k.landed.Add(1)
			x.keep(func() { _ = s.Reset() })
			go func() { _, _ = s.Read(make([]byte, 1)); x.release() }() // the target gave up on it
		}, nil
	case "control-actions":
		if k.own == nil {
			return nil, fmt.Errorf("%s: no token given", a)
		}
		ctrl := make([]byte, 64<<10)
		for j := range ctrl {
			ctrl[j] = byte(1 + j%31) // C0 controls: 6 bytes each in JSON
		}
		to, err := trust.PublicKeyFromPeerID(k.tid)
		if err != nil {
			return nil, err
		}
		// Sealed by hand: the action is no scope, and this is the attack.
		raw, err := protocol.Seal(k.id, &protocol.Envelope{Kind: protocol.KindRequest, RecipientPeer: to, Action: string(ctrl), Token: k.own}, time.Now())
		if err != nil {
			return nil, err
		}
		return func() {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			s, err := k.n.Host().NewStream(c, k.tid, wire.ProtocolRPC)
			if err != nil {
				return
			}
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			if msgio.NewVarintWriter(s).WriteMsg(raw) == nil {
				k.landed.Add(1)
				_ = s.CloseWrite()
				_, _ = io.Copy(io.Discard, s) // the answer, or the reset
			}
			_ = s.Reset()
		}, nil
	case "renew-loop", "sync-loop":
		var req []byte
		var pid p2pprotocol.ID = wire.ProtocolSync
		if a == "renew-loop" {
			if k.cred == nil {
				return nil, fmt.Errorf("%s: no credential given", a)
			}
			pid = wire.ProtocolRenew
			req, _ = proto.Marshal(&protocolpb.RenewRequest{Credential: k.cred.Proto()})
		}
		return func() {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			s, err := k.n.Host().NewStream(c, k.tid, pid)
			if err != nil {
				return
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(5 * time.Second))
			if req != nil && msgio.NewVarintWriter(s).WriteMsg(req) != nil {
				_ = s.Reset()
				return
			}
			if _, err := msgio.NewVarintReaderSize(s, 32<<20).ReadMsg(); err == nil {
				k.landed.Add(1) // answered
			}
		}, nil
	case "nonce-flood":
		if k.own == nil {
			return nil, fmt.Errorf("%s: no token given", a)
		}
		return func() {
			raw, err := k.seal("read:metrics", nil, k.own)
			if err != nil {
				return
			}
			if _, err := k.n.SendRaw(ctx, k.tid, raw); trust.CodeOf(err) == protocol.CodeNoHandler {
				k.landed.Add(1) // accepted, its nonce kept
			}
		}, nil
	case "subscription-flood":
		in, err := k.newInsider(src.insider)
		if err != nil {
			return nil, err
		}
		var mu sync.Mutex
		var s network.Stream
		var topics int
		return func() {
			mu.Lock()
			defer mu.Unlock()
			if s == nil {
				var err error
				if s, err = in.stream(ctx, k, meshsub); err != nil {
					s = nil
					return
				}
			}
			rpc := &pb.RPC{}
			for range 250 { // under the per-RPC limit (256): the filter must look at each
				topics++
				rpc.Subscriptions = append(rpc.Subscriptions, &pb.RPC_SubOpts{Topicid: proto.String(fmt.Sprintf("made-up-%d", topics)), Subscribe: proto.Bool(true)})
			}
			b, _ := proto.Marshal(rpc)
			_ = s.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := msgio.NewVarintWriter(s).WriteMsg(b); err != nil {
				_ = s.Reset()
				s = nil
				return
			}
			k.landed.Add(1)
		}, nil
	case "control-spin":
		return func() {
			for end := time.Now().Add(time.Millisecond); time.Now().Before(end); {
			}
		}, nil
	}
	return nil, fmt.Errorf("no attempt for %q", a)
}

// sourceIPs are the loopback addresses one resource attack dials from.
type sourceIPs struct {
	outsiders []net.IP
	insider   net.IP
	mu        sync.Mutex
	i         int
}

func newSourceIPs(attack int) *sourceIPs {
	s := &sourceIPs{insider: net.IPv4(127, 0, byte(10+attack), 9)}
	for j := 1; j <= 4; j++ {
		s.outsiders = append(s.outsiders, net.IPv4(127, 0, byte(10+attack), byte(j)))
	}
	return s
}

func (s *sourceIPs) next() net.IP {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.i++
	return s.outsiders[s.i%len(s.outsiders)]
}

// plainHost is a libp2p host with key that dials from src over TCP and
// TLS, listens nowhere, and has no resource manager: no limit of the
// attacker's own caps the attack.
func plainHost(key crypto.PrivKey, src net.IP) (host.Host, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
	return libp2p.New(libp2p.Identity(key), libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) { return d, nil })),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
}

// outsider returns a host with a fresh key, connected to the target from
// src, or nil when it could not connect (the target refused it).
func (k *kit) outsider(ctx context.Context, src net.IP) host.Host {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil
	}
	h, err := plainHost(key, src)
	if err != nil {
		return nil
	}
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Connect(c, k.addr); err != nil {
		_ = h.Close()
		return nil
	}
	return h
}

// releaseOnClose lets x go once h has no connection to the target left
// (the target closed it: an outsider's at its admission deadline).
func releaseOnClose(h host.Host, k *kit, x *hold) {
	gone := func(nw network.Network) bool { return nw.Connectedness(k.tid) != network.Connected }
	h.Network().Notify(&network.NotifyBundle{DisconnectedF: func(nw network.Network, _ network.Conn) {
		if gone(nw) {
			go x.release()
		}
	}})
	if gone(h.Network()) {
		go x.release()
	}
}

// insider is the attacker's enrolled identity on a plain host, admitted by
// a hello sent by hand, again whenever the target closed its connection.
type insider struct {
	h  host.Host
	mu sync.Mutex // one admission at a time
}

func (k *kit) newInsider(src net.IP) (*insider, error) {
	if k.cred == nil {
		return nil, errors.New("insider: no credential given")
	}
	h, err := plainHost(k.id.Libp2pKey(), src)
	if err != nil {
		return nil, err
	}
	// The target's router writes to it (it lists as pubsub peers only
	// those it can write to); what it writes is read and dropped.
	h.SetStreamHandler(meshsub, func(s network.Stream) { _, _ = io.Copy(io.Discard, s); _ = s.Reset() })
	go func() { <-k.stop; _ = h.Close() }()
	return &insider{h: h}, nil
}

// stream opens a stream of pid to the target, admitting the insider
// first when it is not connected. A failed admission (the target cut the
// insider off) holds every attempt back for 250 ms: this is not the dial
// loop.
func (in *insider) stream(ctx context.Context, k *kit, pid p2pprotocol.ID) (network.Stream, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := in.admit(c, k); err != nil {
		return nil, err
	}
	return in.h.NewStream(c, k.tid, pid)
}

func (in *insider) admit(ctx context.Context, k *kit) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.h.Network().Connectedness(k.tid) == network.Connected {
		return nil
	}
	err := in.hello(ctx, k)
	if err != nil {
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

func (in *insider) hello(ctx context.Context, k *kit) error {
	if err := in.h.Connect(ctx, k.addr); err != nil {
		return err
	}
	now := time.Now()
	rec, err := discovery.NewRecord(k.id, k.cred, nil, uint64(now.UnixMilli()), time.Minute, now) // a long interval: listed without beats
	if err != nil {
		return err
	}
	hello, err := proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Announcement: rec.Proto()})
	if err != nil {
		return err
	}
	s, err := in.h.NewStream(ctx, k.tid, wire.ProtocolAdmission)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(now.Add(10 * time.Second))
	if err := msgio.NewVarintWriter(s).WriteMsg(hello); err != nil {
		return err
	}
	_, err = msgio.NewVarintReaderSize(s, 1<<16).ReadMsg()
	return err
}

// held is what a resource attack keeps open: at most max at a time, so
// that the attacker's own process stays small, and all of it let go as
// soon as the attack is switched off or ends, so that the windows without
// the attack start clean.
type held struct {
	slots chan struct{}
	mu    sync.Mutex
	open  map[*hold]struct{}
}

// hold is one slot of held.
type hold struct {
	h     *held
	close func() // what it keeps; nil until keep
	done  bool   // released (under h.mu)
}

// newHeld returns an empty held whose content is let go while the attack
// is off and when it ends.
func (k *kit) newHeld(max int) *held {
	hd := &held{slots: make(chan struct{}, max), open: map[*hold]struct{}{}}
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-k.stop:
				hd.releaseAll()
				return
			case <-tick.C:
				if !k.on.Load() {
					hd.releaseAll()
				}
			}
		}
	}()
	return hd
}

// take waits for a free slot while the attack is on; nil once it is off
// or over.
func (hd *held) take(k *kit) *hold {
	for k.on.Load() {
		select {
		case hd.slots <- struct{}{}:
			return &hold{h: hd}
		case <-k.stop:
			return nil
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// keep makes x hold what close lets go (at once, if x was released).
func (x *hold) keep(close func()) {
	x.h.mu.Lock()
	if x.done {
		x.h.mu.Unlock()
		close()
		return
	}
	x.close = close
	x.h.open[x] = struct{}{}
	x.h.mu.Unlock()
}

// release lets go what x holds and frees its slot; the second time, it
// does nothing.
func (x *hold) release() {
	x.h.mu.Lock()
	if x.done {
		x.h.mu.Unlock()
		return
	}
	x.done = true
	delete(x.h.open, x)
	c := x.close
	x.h.mu.Unlock()
	if c != nil {
		c()
	}
	<-x.h.slots
}

func (hd *held) releaseAll() {
	hd.mu.Lock()
	all := make([]*hold, 0, len(hd.open))
	for x := range hd.open {
		all = append(all, x)
	}
	hd.mu.Unlock()
	var wg sync.WaitGroup
	for _, x := range all {
		wg.Add(1)
		go func() { defer wg.Done(); x.release() }()
	}
	wg.Wait()
}
