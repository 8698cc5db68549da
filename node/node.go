package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/adverts"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/exchange"
	"github.com/meshagent/meshagent/node/internal/gate"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/node/internal/liveness"
	"github.com/meshagent/meshagent/node/internal/overlay"
	"github.com/meshagent/meshagent/node/internal/records"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/node/internal/renewal"
	"github.com/meshagent/meshagent/node/internal/revocation"
	"github.com/meshagent/meshagent/node/internal/subfilter"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Lifecycle errors.
var (
	ErrAlreadyStarted = errors.New("node: already started")
	ErrNotStarted     = errors.New("node: not started")
	ErrClosed         = errors.New("node: closed")
)

// Node is one agent on the mesh. Its methods are safe for concurrent use.
type Node struct {
	cfg       Config
	log       *slog.Logger
	self      trust.PublicKey
	verifier  *trust.Verifier
	decider   *protocol.Decider
	gate      *gate.Gate
	admission *gate.Admission
	renewer   *renewal.Renewer
	syncer    *exchange.Exchange // the join-time exchange
	own       *liveness.Self     // this agent's record, beats and liveness loops
	records   *records.Intake
	registry  *discovery.Registry
	live      upkeep
	beats     *overlay.Overlay
	audit     *audit.Log
	revs      *revocation.Set // applied revocations, encoded
	bad       *refused.Cache  // relayed items refused, by hash
	adverts   *adverts.Service

	// calls holds one token per handler running: MaxConcurrentCalls slots.
	calls chan struct{}
	// pool holds this node's idle outbound call streams; rpcIdle counts
	// the inbound ones waiting for a next request (streams.go).
	pool    *streamPool
	rpcIdle idleStreams
	ids     idStrings // peer IDs' text, for audit records

	// choice is the token Call and Publish attach per action (tokenchoice.go).
	choice tokenChoice

	credMu      sync.RWMutex
	cred        *trust.Credential
	pubsubIn    atomic.Int64
	recordsSent atomic.Int64 // own records published (Stats)

	mu       sync.Mutex
	started  bool
	closed   bool
	h        host.Host
	hostRef  atomic.Pointer[host.Host] // h, set once in Start; read without mu
	ps       *pubsub.PubSub
	topics   map[string]*pubsub.Topic
	handlers map[string]Handler
	cancel   context.CancelFunc
	ctx      context.Context

	// handlerTimeouts are the actions' own handler timeouts (HandleWith),
	// under mu.
	handlerTimeouts map[string]time.Duration
}

// New validates cfg and builds a Node. Nothing listens until Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	v, err := trust.NewVerifier(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if err := v.VerifyCredential(cfg.Credential, cfg.Clock()); err != nil {
		return nil, fmt.Errorf("node: own credential: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("logger", "meshagent/node"), self: cfg.Identity.Public(), verifier: v, audit: audit.New(cfg.Audit),
		topics: map[string]*pubsub.Topic{}, handlers: map[string]Handler{}}
	n.cred = cfg.Credential
	n.calls = make(chan struct{}, cfg.MaxConcurrentCalls)
	n.pool = newStreamPool()
	n.gate = gate.New(gate.Deps{
		Listed:           n.isAdmitted,
		AdmissionTimeout: cfg.AdmissionTimeout,
		Clock:            n.now,
		Audit: func(kind audit.Kind, p peer.ID, reason error) {
			r := n.record(audit.In, kind, p.String())
			reject(&r, codeOrDefault(reason, protocol.CodeUnlisted), errDetail(reason))
			n.audit.Write(r)
		},
		ClosePeer: func(p peer.ID) {
			if h := n.host(); h != nil {
				_ = h.Network().ClosePeer(p)
			}
		},
		Blocked: n.blockedHook(),
	})
	n.registry = discovery.NewRegistry(discovery.Config{Verifier: v, Self: n.self, SuspectMissed: cfg.SuspectMissed,
		DeadAfter: cfg.DeadAfter, Allowlist: cfg.Allowlist})
	n.bad = refused.New()
	n.revs = revocation.New(revocation.Deps{Verifier: v, Refused: n.bad, Clock: n.now, Max: v.Policy().MaxRevocations,
		Applied: n.revocationApplied})
	n.beats = overlay.New(overlay.Deps{
		Self: n.self, Registry: n.registry, Clock: n.now,
		HeartbeatInterval: cfg.HeartbeatInterval, DeadAfter: cfg.DeadAfter, AdmissionTimeout: cfg.AdmissionTimeout,
		Degree:          cfg.BeatDegree,
		Admitted:        n.isAdmitted,
		Connect:         n.connect,
		ApplyRevocation: n.applyRevocation,
		ApplyRecord: func(a *protocolpb.Announcement) error {
			return n.records.Apply(a, discovery.Relayed, trust.PublicKey{})
		},
		ApplyLeave: func(l *protocolpb.Leave) error { _, err := n.records.ApplyLeave(l); return err },
		Blame:      n.blame,
		Emit:       n.emit,
		SyncSoon:   func(p peer.ID) { n.syncer.SyncSoon(p) },
		PullSoon:   func(p peer.ID) { n.syncer.PullSoon(p) },
		RevDigest:  n.revs.Sum,
		Frozen:     n.frozenHook(),
		Lost:       n.lostHook(),
	})
	n.own = liveness.New(liveness.Deps{Identity: cfg.Identity, Credential: n.credential, Addrs: n.listenAddrs,
		Registry: n.registry, Clock: n.now, HeartbeatInterval: cfg.HeartbeatInterval,
		Publish: n.publishRegistry,
		TopicPeers: func() int {
			n.mu.Lock()
			t := n.topics[wire.TopicRegistry]
			n.mu.Unlock()
			if t == nil {
				return 0
			}
			return len(t.ListPeers())
		},
		Originate: n.beats.Originate, RevDigest: n.revs.Sum,
		EveryBeat: func() {
			n.renewer.MaybeRenew(n.ctx)
			n.revs.Prune(n.now())
		},
		EveryFourTicks: func() { n.admission.ForgetStrangers() },
		Emit:           n.emit,
		Frozen:         n.frozenHook(),
		Advertised:     func() ([]string, [32]byte) { return n.adverts.Advertised() },
	})
	n.adverts = adverts.New(adverts.Deps{Identity: cfg.Identity, Registry: n.registry, Host: n.host, Clock: n.now,
		Timeout:      cfg.AdmissionTimeout,
		ServeAllowed: func(p peer.ID) bool { return n.serveAllowed(p, wire.ProtocolAdvert) },
		Reach:        n.reach,
		Changed:      n.own.AdvertChanged})
	n.records = records.New(records.Deps{Registry: n.registry, Verifier: v, Refused: n.bad, Clock: n.now,
		HeartbeatInterval: cfg.HeartbeatInterval, Learn: n.learn,
		Left: func(evs []discovery.Event, news bool, l *protocolpb.Leave) {
			n.emit(evs)
			if news {
				n.beats.PushLeave(l)
			}
		}})
	n.syncer = exchange.New(exchange.Deps{Registry: n.registry, Host: n.host, Clock: n.now,
		Timeout: cfg.AdmissionTimeout, HeartbeatInterval: cfg.HeartbeatInterval,
		ResyncAfter:  3 * gossipParams(cfg.HeartbeatInterval).HeartbeatInterval,
		Own:          n.own.Record,
		Revocations:  n.revs.All,
		ServeAllowed: n.serveAllowed, ApplyRevocation: n.applyRevocation, Check: n.records.Check, Refused: n.bad,
		Blame: n.blame, Charged: func(c trust.Code) bool { return forwarderFault[c] },
		Emit: n.emit, LinkSoon: n.beats.LinkSoon})
	n.renewer = renewal.New(renewal.Deps{Self: n.self, Issuer: cfg.Issuer, Verifier: v, Registry: n.registry,
		Host: n.host, Clock: n.now, Logger: n.log, Timeout: cfg.AdmissionTimeout, HeartbeatInterval: cfg.HeartbeatInterval,
		RenewAfter: cfg.RenewAfter, Credential: n.credential,
		ServeAllowed: func(p peer.ID) bool { return n.serveAllowed(p, wire.ProtocolRenew) },
		Served:       n.renewalServed, Renewed: n.renewed})
	hb := cfg.HeartbeatInterval
	n.live.serving = limit.New(hb, serveBurst)
	n.live.ownRefused = limit.New(time.Second/gate.RejectRate, gate.RejectBurst)
	n.live.subscriptions = limit.New(time.Second/subscriptionRate, subscriptionBurst)
	for _, raw := range cfg.Revocations {
		if err := n.applyRevocation(raw); err != nil {
			return nil, fmt.Errorf("node: revocation: %w", err)
		}
	}
	n.decider = &protocol.Decider{Verifier: v, Replay: protocol.NewReplayGuard(cfg.ReplayWindow, 0, 0),
		Membership: n.registry, MaxSize: cfg.MaxEnvelopeSize}
	return n, nil
}

// Start builds the libp2p host, starts listening, and joins pubsub. ctx
// bounds start-up only.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	if n.started {
		return ErrAlreadyStarted
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("node: start: %w", err)
	}
	limits := rcmgr.DefaultLimits
	serviceLimits(&limits)
	for _, p := range []p2pprotocol.ID{wire.ProtocolRPC, wire.ProtocolRPC2} {
		limits.AddProtocolLimit(p, rcmgr.BaseLimit{StreamsInbound: 1024, StreamsOutbound: 1024, Streams: 2048, Memory: 64 << 20}, rcmgr.BaseLimitIncrease{})
	}
	// Room for admitted agents whatever waits for admission: at most
	// maxPending connections (gate.go) and unadmittedStreams streams each;
	// room for handshakes in flight (transient) beyond a few sources' worth
	// (sourceBurst each).
	scaled := rcmgr.PartialLimitConfig{
		System:    rcmgr.ResourceLimits{ConnsInbound: 1024, Conns: 2048},
		Transient: rcmgr.ResourceLimits{StreamsInbound: 2048, Streams: 4096, ConnsInbound: 512, Conns: 1024},
	}.Build(limits.AutoScale())
	// Many agents may sit behind one IP (containers, one host): raise the
	// per-subnet connection cap from 8.
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(scaled),
		rcmgr.WithLimitPerSubnet([]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: 256}}, []rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: 256}}))
	if err != nil {
		return fmt.Errorf("node: resource manager: %w", err)
	}
	grm := n.gate.ResourceManager(rm)
	h, ok, err := n.simulatedHost(grm) // a simulated network's host, in simulations only
	if !ok {
		h, err = n.buildHost(grm)
	}
	if err != nil {
		return fmt.Errorf("node: libp2p host: %w", err)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.syncer.Start(n.ctx)
	n.admission = gate.NewAdmission(n.ctx, gate.AdmissionDeps{
		Gate: n.gate, Host: n.host, Timeout: n.cfg.AdmissionTimeout, Listed: n.isAdmitted,
		Record:       n.own.Record,
		Learn:        func(rec *discovery.Record) error { return n.learn(rec, discovery.Direct) },
		HelloAllowed: func(p peer.ID) bool { return n.serveAllowed(p, wire.ProtocolAdmission) },
		Admitted: func(p peer.ID) {
			r := n.record(audit.In, audit.Admission, p.String())
			r.Decision = audit.Accept
			n.audit.Write(r)
		},
		Exchanged: func(p peer.ID) {
			n.syncer.SyncSoon(p) // at most once a heartbeat per peer
			n.syncer.ResyncOnce(p)
		},
	})
	// The router sees the host through the admission gate: it opens and
	// reads pubsub streams only with admitted peers.
	ps, err := pubsub.NewGossipSub(n.ctx, n.gate.Host(n.ctx, h),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMessageIdFn(messageID),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerExchange(false),
		pubsub.WithMaxMessageSize(n.cfg.MaxEnvelopeSize+4096),
		pubsub.WithPeerScore(peerScoreParams(), peerScoreThresholds()),
		pubsub.WithLogger(n.cfg.Logger.With("logger", "pubsub")),
		pubsub.WithGossipSubParams(gossipParams(n.cfg.HeartbeatInterval)),
		pubsub.WithAppSpecificRpcInspector(n.inspectRPC),
		pubsub.WithSubscriptionFilter(subfilter.New(h.Network())),
		pubsub.WithSeenMessagesTTL(seenMessagesTTL),
	)
	if err != nil {
		n.cancel()
		h.Close()
		return fmt.Errorf("node: pubsub: %w", err)
	}
	n.h, n.ps = h, ps
	n.hostRef.Store(&h)
	h.SetStreamHandler(wire.ProtocolAdmission, n.admission.Handle) // the one protocol open before admission
	h.SetStreamHandler(wire.ProtocolRPC, n.gateWrap(n.handleRPC))
	h.SetStreamHandler(wire.ProtocolRPC2, n.gateWrap(n.handleRPC2))
	go n.pool.run(n.ctx)
	// Every node serves the renewal protocol (a node that is no issuer
	// refuses), so that identify does not tell an outsider which hosts
	// hold an anchor key.
	h.SetStreamHandler(wire.ProtocolRenew, n.gateWrap(n.renewer.Handle))
	h.SetStreamHandler(wire.ProtocolAdvert, n.gateWrap(n.adverts.Handle))
	h.Network().Notify(n.admission.Notifiee())
	if err := n.startRegistry(); err != nil {
		n.cancel()
		h.Close()
		return fmt.Errorf("node: registry: %w", err)
	}
	for _, b := range n.cfg.Bootstrap {
		ai, err := peer.AddrInfoFromString(b)
		if err != nil {
			n.cancel()
			h.Close()
			return fmt.Errorf("node: bootstrap %q: %w", b, err)
		}
		h.ConnManager().Protect(ai.ID, "bootstrap")
		go n.keepConnected(*ai)
	}
	if n.cfg.MDNS {
		svc := mdns.NewMdnsService(h, MDNSService, mdnsNotifee{n})
		if err := svc.Start(); err != nil {
			n.cancel()
			h.Close()
			return fmt.Errorf("node: mdns: %w", err)
		}
		go func() { <-n.ctx.Done(); svc.Close() }()
	}
	n.started = true
	n.log.Info("node started", "peer", h.ID(), "addrs", h.Addrs())
	return nil
}

// Close stops the node after telling the mesh it leaves. It is safe to
// call more than once.
func (n *Node) Close() error { return n.close(true) }

func (n *Node) close(graceful bool) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.simClosed()
	h, cancel, started := n.h, n.cancel, n.started
	n.mu.Unlock()
	n.own.Stop() // no heartbeat may follow the leave
	if started && graceful {
		n.sendLeave() // a graceful stop: tell the mesh

	}
	if cancel != nil {
		cancel()
	}
	if h != nil {
		return h.Close()
	}
	return nil
}

// ID returns the agent's peer ID.
func (n *Node) ID() peer.ID { return n.self.PeerID() }

// credential returns the agent's current credential (it changes on renewal).
func (n *Node) credential() *trust.Credential {
	n.credMu.RLock()
	defer n.credMu.RUnlock()
	return n.cred
}

// Credential returns the agent's current credential.
func (n *Node) Credential() *trust.Credential { return n.credential() }

func (n *Node) listenAddrs() []ma.Multiaddr {
	if h := n.host(); h != nil {
		return h.Addrs()
	}
	return nil
}

func (n *Node) keepConnected(ai peer.AddrInfo) {
	base := max(n.cfg.HeartbeatInterval/10, 10*time.Millisecond)
	// At most a third of a heartbeat (10 s by default) between attempts,
	// so that a healed partition is re-admitted within a heartbeat.
	maxWait := max(n.cfg.HeartbeatInterval/3, time.Second)
	wait := base
	for {
		h := n.host()
		if h == nil || n.ctx.Err() != nil {
			return
		}
		if h.Network().Connectedness(ai.ID) != network.Connected {
			ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
			// This loop's own backoff governs: skip the swarm's dial
			// backoff, which after a long outage grows to minutes.
			err := n.connect(network.WithForceDirectDial(ctx, "keep connected"), ai)
			cancel()
			if err != nil {
				n.log.Debug("peer unreachable", "peer", ai.ID, "err", err, "retry_in", wait)
				wait = min(2*wait, maxWait)
			} else {
				wait = base
			}
		}
		next := wait
		if h.Network().Connectedness(ai.ID) == network.Connected {
			next = n.cfg.HeartbeatInterval // connected: look again in a beat
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

// host returns the libp2p host (nil before Start). It takes no lock:
// it is called from pubsub's event loop (a peer cut off closes its
// connections) while Node.mu may be held by a call that waits on that
// loop (join).
func (n *Node) host() host.Host {
	if h := n.hostRef.Load(); h != nil {
		return *h
	}
	return nil
}

// Addrs returns the node's listen addresses, each ending in /p2p/PEERID.
func (n *Node) Addrs() []ma.Multiaddr {
	h := n.host()
	if h == nil {
		return nil
	}
	addrs, _ := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	return addrs
}

func (n *Node) now() time.Time { return n.cfg.Clock() }

// JoinOption adjusts Join.
type JoinOption func(*joinOptions)

type joinOptions struct{ keep bool }

// KeepConnected makes Join reconnect to the peer whenever the connection
// is lost (after a dead verdict on either side, a restart, a partition),
// with exponential backoff from a tenth of the heartbeat interval up to a
// third of it (at least 1 s), until the node closes. Bootstrap peers are
// kept this way. Join then starts the loop even when its first attempt
// fails.
func KeepConnected() JoinOption { return func(o *joinOptions) { o.keep = true } }

// Join dials the agent at ai and completes admission: it returns only
// once both sides have exchanged and verified credentials, or an error.
// peer.AddrInfoFromString parses a multiaddr ending in /p2p/PEERID.
func (n *Node) Join(ctx context.Context, ai peer.AddrInfo, opts ...JoinOption) error {
	var o joinOptions
	for _, f := range opts {
		f(&o)
	}
	h := n.host()
	if h == nil {
		return ErrNotStarted
	}
	err := n.connect(ctx, ai)
	if o.keep {
		h.ConnManager().Protect(ai.ID, "keep")
		go n.keepConnected(ai)
	}
	return err
}

func (n *Node) connect(ctx context.Context, ai peer.AddrInfo) error {
	h := n.host()
	if h == nil {
		return ErrNotStarted
	}
	if err := h.Connect(ctx, ai); err != nil {
		return fmt.Errorf("node: connect %s: %w", ai.ID, err)
	}
	return n.admission.Admit(ctx, ai.ID)
}

// Peers lists the agents in the registry with their state as this node
// sees it.
func (n *Node) Peers() []discovery.Entry { return n.registry.Entries() }

// inspectRPC drops every RPC of a peer that is not admitted (the gate
// keeps such peers out of pubsub; this holds if one ever got in) and the
// messages of a peer that is throttled, counts received pubsub bytes and
// (in simulations) drops messages as a lossy link would.
func (n *Node) inspectRPC(from peer.ID, rpc *pubsub.RPC) error {
	if !n.isAdmitted(from) {
		n.gate.CountGated()
		return gate.ErrNotAdmitted
	}
	n.pubsubIn.Add(int64(proto.Size(&rpc.RPC)))
	// Subscription changes past their rate cut the peer off: the filter
	// keeps few of them, but the router decodes and checks every one in
	// its one event loop (an honest node announces its topics, at most
	// 256, once per connection).
	if n.gate.Refused(from) { // cut off: its RPCs still in flight go too
		return gate.ErrNotAdmitted
	}
	if k := len(rpc.Subscriptions); k > 0 && !n.live.subscriptions.AllowN(string(from), k) {
		n.gate.Refuse(from, protocol.Reject(protocol.CodeFlood, "subscription changes past %d at once and %d a second", subscriptionBurst, subscriptionRate))
		return errSubscriptionFlood
	}
	// A peer that spent its rejection budget gets its messages dropped
	// here, before pubsub checks their signatures or marks them seen (a
	// message dropped later would be taken as seen, and an honest copy
	// from another peer as a duplicate); its gossip and subscriptions pass.
	// A peer that was charged lately gets no more messages checked from one
	// RPC than its budget has left: one RPC of 400 arriving as a token
	// refills is not 400 checks.
	if credit, charged := n.gate.Credit(from); charged && len(rpc.Publish) > credit {
		if credit == 0 {
			n.gate.CountThrottle()
		}
		rpc.Publish = rpc.Publish[:credit]
	}
	// A peer whose own messages this node keeps refusing (stale, dead,
	// replay: not charged) gets no more of its own messages checked than
	// its budget of such refusals has left, until it refills; its relays
	// of others' pass.
	if left := n.live.ownRefused.Left(string(from)); len(rpc.Publish) > left {
		kept := rpc.Publish[:0]
		for _, m := range rpc.Publish {
			if peer.ID(m.GetFrom()) != from || left > 0 {
				if peer.ID(m.GetFrom()) == from {
					left--
				}
				kept = append(kept, m)
			} else {
				n.gate.CountThrottle()
			}
		}
		rpc.Publish = kept
	}
	n.dropSimulated(from, rpc)
	return nil
}

// MDNSService is meshagent's own mDNS service name, so that other libp2p
// applications on the LAN are not contacted.
const MDNSService = "meshagent"

type mdnsNotifee struct{ n *Node }

// HandlePeerFound connects to an agent found on the LAN; admission decides
// whether it stays.
func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == m.n.ID() {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(m.n.ctx, m.n.cfg.AdmissionTimeout)
		defer cancel()
		_ = m.n.connect(ctx, ai)
	}()
}

// gateWrap wraps a stream handler so that it runs only for peers that
// passed the gate.
func (n *Node) gateWrap(h network.StreamHandler) network.StreamHandler {
	return n.gate.Wrap(n.ctx, h)
}

// isAdmitted reports whether p is listed in the registry.
func (n *Node) isAdmitted(p peer.ID) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	return n.registry.State(k) != 0
}
