//go:build meshsim

package node

// The hooks of simulations and attack scenarios: built only with the
// meshsim tag (make test, the simulations, the demo), never into the
// meshagent binary (make build). A production node has none of them:
// see sim_off.go.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// simState is what the hooks set on one node, kept beside it (a
// production Node has no field for it).
type simState struct {
	frozenUntil atomic.Int64
	drop        atomic.Pointer[func(from peer.ID) bool]
	filter      atomic.Pointer[func(p peer.ID) bool]
	hostOpts    []libp2p.Option // set before Start
}

// simStates holds the state of nodes a hook was set on, until they close.
var simStates sync.Map // *Node → *simState

// sim returns n's hook state, making it.
func (n *Node) sim() *simState {
	s, _ := simStates.LoadOrStore(n, &simState{})
	return s.(*simState)
}

// simSet returns n's hook state, nil when no hook was set.
func (n *Node) simSet() *simState {
	if s, ok := simStates.Load(n); ok {
		return s.(*simState)
	}
	return nil
}

// simClosed forgets n's hook state.
func (n *Node) simClosed() { simStates.Delete(n) }

// SetDropMessage makes the node drop each pubsub message and each
// heartbeat received from a peer for which f returns true, before pubsub
// sees it, as a lossy link would: gossip can still deliver the message by
// another path. nil stops it.
func (n *Node) SetDropMessage(f func(from peer.ID) bool) {
	if f == nil {
		n.sim().drop.Store(nil)
		return
	}
	n.sim().drop.Store(&f)
}

// SetPeerFilter makes the connection gater refuse every peer for which f
// returns false (it can neither dial nor be dialed), as a partition
// would. nil stops it.
func (n *Node) SetPeerFilter(f func(p peer.ID) bool) {
	if f == nil {
		n.sim().filter.Store(nil)
		return
	}
	n.sim().filter.Store(&f)
}

func (n *Node) lost(from peer.ID) bool {
	s := n.simSet()
	if s == nil {
		return false
	}
	d := s.drop.Load()
	return d != nil && (*d)(from)
}

func (n *Node) blocked(p peer.ID) bool {
	s := n.simSet()
	if s == nil {
		return false
	}
	f := s.filter.Load()
	return f != nil && !(*f)(p)
}

func (n *Node) blockedHook() func(peer.ID) bool { return n.blocked }
func (n *Node) frozenHook() func() bool         { return n.frozen }
func (n *Node) lostHook() func(peer.ID) bool    { return n.lost }

func (n *Node) dropSimulated(from peer.ID, rpc *pubsub.RPC) {
	if s := n.simSet(); s == nil || s.drop.Load() == nil || len(rpc.Publish) == 0 {
		return
	}
	kept := rpc.Publish[:0]
	for _, m := range rpc.Publish {
		if !n.lost(from) {
			kept = append(kept, m)
		}
	}
	rpc.Publish = kept
}

// Crash stops the node without a leave message, as a killed process
// would: the mesh must notice by itself. Simulations use it.
func (n *Node) Crash() error { return n.close(false) }

// Freeze stops this node's heartbeats and liveness processing for d, as a
// long GC or VM pause would (simulations use it). Calls still work. As
// with a real pause, a heartbeat that fell due during it goes out as soon
// as it ends, not at the next interval.
func (n *Node) Freeze(d time.Duration) {
	n.sim().frozenUntil.Store(time.Now().Add(d).UnixNano())
}

func (n *Node) frozen() bool {
	s := n.simSet()
	return s != nil && time.Now().UnixNano() < s.frozenUntil.Load()
}

// SendRaw sends pre-sealed request bytes and waits for the reply: the
// attack scenarios (replay, tampering) use it. Normal code calls Call.
func (n *Node) SendRaw(ctx context.Context, to peer.ID, raw []byte) (*Reply, error) {
	toKey, err := trust.PublicKeyFromPeerID(to)
	if err != nil {
		return nil, err
	}
	env, err := protocol.Open(raw, 1<<30, 1<<30)
	if err != nil {
		env = &protocol.Envelope{}
	}
	return n.roundTrip(ctx, to, toKey, env, raw, &CallOptions{})
}

// SealRequest builds and signs a request without sending it.
func (n *Node) SealRequest(to peer.ID, action string, body []byte, tok *trust.Token) ([]byte, error) {
	toKey, err := trust.PublicKeyFromPeerID(to)
	if err != nil {
		return nil, err
	}
	if tok == nil {
		tok = n.tokenFor(action)
	}
	return protocol.Seal(n.cfg.Identity, &protocol.Envelope{Kind: protocol.KindRequest, RecipientPeer: toKey, Action: action, Payload: body, Token: tok}, n.now())
}

// SealMessage builds and signs a pubsub envelope without publishing it.
func (n *Node) SealMessage(topic, action string, body []byte, tok *trust.Token) ([]byte, error) {
	return n.sealMessage(topic, action, body, tok)
}

// PublishRaw publishes pre-sealed bytes (attack scenarios use it).
func (n *Node) PublishRaw(ctx context.Context, topic string, raw []byte) error {
	return n.publishSealed(ctx, topic, raw)
}

// Host returns the libp2p host (nil before Start): tests and attack
// scenarios open raw streams with it. A production node does not expose
// it: a stream handler registered on it would skip the gate and the
// decision function.
func (n *Node) Host() host.Host { return n.host() }

// Verifier returns the node's verifier (tests read its revocations).
func (n *Node) Verifier() *trust.Verifier { return n.verifier }

// SetHostOptions makes Start build the host with libp2p.New and these
// options (a simulated network's transport) instead of buildHost's: a
// simulated network is reached only through libp2p's own options. The
// host stays TLS 1.3 only: options that bring another security transport
// (or none) are refused at Start.
func (n *Node) SetHostOptions(opts ...libp2p.Option) { n.sim().hostOpts = opts }

func (n *Node) simulatedHost(rm network.ResourceManager) (host.Host, bool, error) {
	s := n.simSet()
	if s == nil || len(s.hostOpts) == 0 {
		return nil, false, nil
	}
	opts := []libp2p.Option{
		libp2p.Identity(n.cfg.Identity.Libp2pKey()),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.ListenAddrStrings(n.cfg.ListenAddrs...),
		libp2p.ConnectionGater(n.gate),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	opts = append(opts, s.hostOpts...)
	var probe libp2p.Config
	if err := probe.Apply(opts...); err != nil {
		return nil, true, fmt.Errorf("libp2p options: %w", err)
	}
	if probe.Insecure || len(probe.SecurityTransports) != 1 || probe.SecurityTransports[0].ID != libp2ptls.ID {
		return nil, true, fmt.Errorf("host options may not change the security transport: the host is TLS 1.3 only")
	}
	h, err := libp2p.New(opts...)
	return h, true, err
}
