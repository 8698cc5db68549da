package node

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/core/sec"
	bhost "github.com/libp2p/go-libp2p/p2p/host/basic"
	"github.com/libp2p/go-libp2p/p2p/host/eventbus"
	"github.com/libp2p/go-libp2p/p2p/host/peerstore/pstoremem"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	tptu "github.com/libp2p/go-libp2p/p2p/net/upgrader"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/quicreuse"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	quicgo "github.com/quic-go/quic-go"
	"golang.org/x/crypto/hkdf"
)

// The host is built here piece by piece, not with libp2p.New: that
// constructor's package links every transport and security protocol
// libp2p has (Noise, WebTransport, WebRTC) into the binary, and takes
// options that could configure them. This host has TLS 1.3 over TCP and
// QUIC, yamux, identify and ping, and nothing else: no relay, no NAT
// traversal, no other security transport to negotiate or to misconfigure.

// serviceLimits sets the resource manager's limits of the libp2p services
// the host runs, identify and ping (libp2p's defaults for them).
func serviceLimits(l *rcmgr.ScalingLimitConfig) {
	l.AddServiceLimit(identify.ServiceName,
		rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20})
	l.AddServicePeerLimit(identify.ServiceName,
		rcmgr.BaseLimit{StreamsInbound: 16, StreamsOutbound: 16, Streams: 32, Memory: 1 << 20}, rcmgr.BaseLimitIncrease{})
	for _, id := range []protocol.ID{identify.ID, identify.IDPush} {
		l.AddProtocolLimit(id, rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20},
			rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 128, Memory: 4 << 20})
		l.AddProtocolPeerLimit(id, rcmgr.BaseLimit{StreamsInbound: 16, StreamsOutbound: 16, Streams: 32, Memory: 32 * (256<<20 + 16<<10)},
			rcmgr.BaseLimitIncrease{})
	}
	l.AddServiceLimit(ping.ServiceName, rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 64, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 64, Memory: 4 << 20})
	l.AddProtocolLimit(ping.ID, rcmgr.BaseLimit{StreamsInbound: 64, StreamsOutbound: 64, Streams: 64, Memory: 4 << 20},
		rcmgr.BaseLimitIncrease{StreamsInbound: 64, StreamsOutbound: 64, Streams: 64, Memory: 4 << 20})
	l.AddServicePeerLimit(ping.ServiceName, rcmgr.BaseLimit{StreamsInbound: 2, StreamsOutbound: 3, Streams: 4, Memory: 32 * (256<<20 + 16<<10)},
		rcmgr.BaseLimitIncrease{})
	l.AddProtocolPeerLimit(ping.ID, rcmgr.BaseLimit{StreamsInbound: 2, StreamsOutbound: 3, Streams: 4, Memory: 32 * (256<<20 + 16<<10)},
		rcmgr.BaseLimitIncrease{})
}

// builtHost is the host with what it does not close itself.
type builtHost struct {
	host.Host
	closers []io.Closer // after the host, in order
}

func (h *builtHost) Close() error {
	err := h.Host.Close()
	for _, c := range h.closers {
		err = errors.Join(err, c.Close())
	}
	return err
}

// buildHost builds the libp2p host on rm (the resource manager with the
// gate's bounds in front) with the gate as connection gater, and listens.
// Closing the host closes what it was built from.
func (n *Node) buildHost(rm network.ResourceManager) (host.Host, error) {
	key := n.cfg.Identity.Libp2pKey()
	pid, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	ps, err := pstoremem.NewPeerstore()
	if err != nil {
		return nil, err
	}
	built := &builtHost{closers: []io.Closer{rm, ps}} // closed last, in this order
	fail := func(err error) (host.Host, error) {
		if built.Host != nil {
			_ = built.Close()
		} else {
			for _, c := range built.closers {
				_ = c.Close()
			}
		}
		return nil, err
	}
	if err := ps.AddPrivKey(pid, key); err != nil {
		return fail(err)
	}
	if err := ps.AddPubKey(pid, key.GetPublic()); err != nil {
		return fail(err)
	}
	reg := n.cfg.Prometheus
	var busOpts []eventbus.Option
	swarmOpts := []swarm.Option{swarm.WithResourceManager(rm), swarm.WithConnectionGater(n.gate)}
	var quicOpts []quicreuse.Option
	if reg != nil {
		rcmgr.MustRegisterWith(reg)
		busOpts = append(busOpts, eventbus.WithMetricsTracer(eventbus.NewMetricsTracer(eventbus.WithRegisterer(reg))))
		swarmOpts = append(swarmOpts, swarm.WithMetricsTracer(swarm.NewMetricsTracer(swarm.WithRegisterer(reg))))
		quicOpts = append(quicOpts, quicreuse.EnableMetrics(reg))
	}
	bus := eventbus.NewBus(busOpts...)
	sw, err := swarm.NewSwarm(pid, ps, bus, swarmOpts...)
	if err != nil {
		return fail(err)
	}
	muxers := []tptu.StreamMuxer{{ID: yamux.ID, Muxer: yamux.DefaultTransport}}
	tls, err := libp2ptls.New(libp2ptls.ID, key, muxers) // TLS 1.3 only: no Noise, no plaintext
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	upg, err := tptu.New([]sec.SecureTransport{tls}, muxers, nil, rm, n.gate)
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	tcpT, err := tcp.NewTCPTransport(upg, rm, nil)
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	resetKey, tokenKey, err := quicKeys(key)
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	// Every inbound QUIC connection opens its resource scope (where the
	// gate counts its source) before the handshake, after proving its
	// source address (the gate's VerifySourceAddress), as with libp2p.New.
	quicOpts = append(quicOpts,
		quicreuse.ConnContext(func(ctx context.Context, ci *quicgo.ClientInfo) (context.Context, error) {
			addr, err := quicreuse.ToQuicMultiaddr(ci.RemoteAddr, quicgo.Version1)
			if err != nil {
				addr = nil
			}
			scope, err := rm.OpenConnection(network.DirInbound, false, addr)
			if err != nil {
				return ctx, err
			}
			ctx = network.WithConnManagementScope(ctx, scope)
			context.AfterFunc(ctx, scope.Done)
			return ctx, nil
		}),
		quicreuse.VerifySourceAddress(func(a net.Addr) bool { return rm.VerifySourceAddress(a) }))
	qcm, err := quicreuse.NewConnManager(resetKey, tokenKey, quicOpts...)
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	built.closers = append([]io.Closer{qcm}, built.closers...) // after the swarm
	quicT, err := quic.NewTransport(key, qcm, nil, n.gate, rm)
	if err == nil {
		err = sw.AddTransport(tcpT)
	}
	if err == nil {
		err = sw.AddTransport(quicT)
	}
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	cm, err := connmgr.NewConnManager(160, 192) // libp2p's defaults; bootstrap peers are protected
	if err != nil {
		_ = sw.Close()
		return fail(err)
	}
	h, err := bhost.NewHost(sw, &bhost.HostOpts{EventBus: bus, ConnManager: cm, EnablePing: true,
		EnableMetrics: reg != nil, PrometheusRegisterer: reg})
	if err != nil {
		_ = cm.Close()
		_ = sw.Close()
		return fail(err)
	}
	built.Host = h // it closes the swarm and the connection manager
	var addrs []ma.Multiaddr
	for _, s := range n.cfg.ListenAddrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fail(fmt.Errorf("listen address %q: %w", s, err))
		}
		addrs = append(addrs, a)
	}
	if err := sw.Listen(addrs...); err != nil {
		return fail(err)
	}
	h.Start()
	return built, nil
}

// quicKeys derives QUIC's stateless-reset and token keys from the
// identity key, as libp2p does, so that they survive a restart.
func quicKeys(key crypto.PrivKey) (quicgo.StatelessResetKey, quicgo.TokenGeneratorKey, error) {
	var reset quicgo.StatelessResetKey
	var token quicgo.TokenGeneratorKey
	raw, err := key.Raw()
	if err != nil {
		return reset, token, err
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, raw, nil, []byte("libp2p quic stateless reset key")), reset[:]); err != nil {
		return reset, token, err
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, raw, nil, []byte("libp2p quic token generator key")), token[:]); err != nil {
		return reset, token, err
	}
	return reset, token, nil
}
