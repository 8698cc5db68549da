//go:build meshsim

package node_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// convergedMesh is testMesh once every agent sees every other alive.
func convergedMesh(t testing.TB) (*simulations.Mesh, *atomic.Int32) {
	t.Helper()
	m, runs := testMesh(t, "tcp")
	if err := simulations.WaitFor(10*time.Second, func() error { return m.Converged("alive") }); err != nil {
		t.Fatal(err)
	}
	return m, runs
}

// waitClosed waits until h has no connection to p (the node closed it).
func waitClosed(t testing.TB, h host.Host, p peer.ID) {
	t.Helper()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if h.Network().Connectedness(p) == network.Connected {
			return errors.New("still connected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// outsiderHost is a plain TLS 1.3 libp2p host with a fresh key: it can
// complete the handshake with any node but holds no credential.
func outsiderHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// An outsider that runs gossipsub, connects, subscribes to every topic and
// never sends a hello receives nothing of the mesh until it is closed at
// the admission deadline, and nothing it publishes is processed; every
// other protocol resets its streams unread. (Before the gate it received
// about 2 500 envelopes in 1.5 s, registry records included.)
func TestOutsiderGetsNothingBeforeAdmission(t *testing.T) {
	m, _ := convergedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.Grant("orchestrator", []string{"publish:tasks"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	worker, orch := m.Agents["worker"].Node, m.Agents["orchestrator"].Node
	wsub, err := worker.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := orch.Subscribe("tasks"); err != nil {
		t.Fatal(err)
	}
	// The mesh's traffic: the orchestrator publishes all along; the
	// worker counts what reaches it (the control).
	var honest atomic.Int64
	go func() {
		for {
			if _, err := wsub.Next(ctx); err != nil {
				return
			}
			honest.Add(1)
		}
	}()
	go func() {
		for ctx.Err() == nil {
			_ = orch.Publish(ctx, "tasks", "publish:tasks", []byte("job"))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if honest.Load() < 10 {
			return errors.New("no traffic on tasks yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	out := outsiderHost(t)
	ps, err := pubsub.NewGossipSub(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	for _, name := range []string{"tasks", wire.TopicRegistry, wire.TopicRevocations} {
		topic, err := ps.Join(name)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := topic.Subscribe()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				msg, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if msg.ReceivedFrom != out.ID() { // not its own
					got.Add(1)
				}
			}
		}()
		go func() { // what it sends must not be processed either
			for ctx.Err() == nil {
				_ = topic.Publish(ctx, []byte("outsider"))
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	gatedBefore := worker.Stats().Gated
	before := honest.Load()
	if err := out.Connect(ctx, peer.AddrInfo{ID: worker.ID(), Addrs: worker.Host().Addrs()}); err != nil {
		t.Fatalf("TLS connection refused before admission: %v", err)
	}
	// Every other protocol the node serves: a frame in, nothing out.
	for _, pid := range []p2pprotocol.ID{wire.ProtocolRPC, wire.ProtocolSync, wire.ProtocolRevocations, wire.ProtocolLeave, wire.ProtocolBeat} {
		go func() {
			s, err := out.NewStream(ctx, worker.ID(), pid)
			if err != nil {
				return
			}
			_ = s.SetDeadline(time.Now().Add(10 * time.Second))
			_ = msgio.NewVarintWriter(s).WriteMsg([]byte("outsider frame"))
			if n, _ := s.Read(make([]byte, 64)); n > 0 {
				got.Add(1)
			}
		}()
	}
	// Until the worker closes it at the admission deadline (2 s).
	waitClosed(t, out, worker.ID())
	if honest.Load()-before < 10 {
		t.Fatalf("the worker got %d messages while the outsider was connected: the test saw no traffic", honest.Load()-before)
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the outsider received %d messages or replies before admission", n)
	}
	for _, a := range m.Audit() {
		if a.Sender == out.ID().String() && a.Kind != "admission" {
			t.Fatalf("the worker processed what the outsider sent: %+v", a)
		}
	}
	// The streams waiting at the gate see the connection closed within a
	// poll of it.
	if err := simulations.WaitFor(5*time.Second, func() error {
		if worker.Stats().Gated <= gatedBefore {
			return errors.New("no stream of the outsider was refused at the gate")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("outsider: 0 messages while the worker got %d; %d streams refused at the gate", honest.Load()-before, worker.Stats().Gated-gatedBefore)
}

// An outsider that re-dials with a fresh key each time and sends a bad
// hello costs the node a handshake per attempt only up to its source's
// budget; past it, its connections are refused before the handshake,
// while an admitted agent's calls go on.
func TestFreshIdentityDialLoopIsBounded(t *testing.T) {
	m, runs := testMesh(t, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	worker := m.Agents["worker"].Node
	addrs := peer.AddrInfo{ID: worker.ID(), Addrs: worker.Host().Addrs()}
	const attempts = 200
	secured := 0
	start := time.Now()
	for range attempts {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
			libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			t.Fatal(err)
		}
		if h.Connect(ctx, addrs) == nil {
			if s, err := h.NewStream(ctx, worker.ID(), wire.ProtocolAdmission); err == nil {
				secured++
				_ = msgio.NewVarintWriter(s).WriteMsg([]byte("not a hello"))
				_, _ = s.Read(make([]byte, 1)) // reset once refused
			}
		}
		h.Close()
	}
	elapsed := time.Since(start)
	// The budget: 64 at once plus 16 a second.
	if limit := 64 + int(16*elapsed.Seconds()) + 8; secured > limit {
		t.Fatalf("%d of %d fresh identities reached admission in %s; the bound is %d", secured, attempts, elapsed.Round(time.Millisecond), limit)
	}
	if secured == 0 {
		t.Fatal("no attempt reached admission: the test measured nothing")
	}
	// The honest pair is untouched.
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("honest call during the dial loop: %v", err)
	}
	if runs.Load() == 0 {
		t.Fatal("the handler did not run for the honest call")
	}
	t.Logf("%d of %d fresh identities reached admission in %s", secured, attempts, elapsed.Round(time.Millisecond))
}

// A simulated network's host options cannot bring Noise (or no security)
// back. (A production node takes no libp2p options at all: buildHost.)
func TestHostOptionsKeepTLSOnly(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	ag := m.Agents["worker"]
	for name, opt := range map[string]libp2p.Option{"noise": libp2p.Security(noise.ID, noise.New), "insecure": libp2p.NoSecurity} {
		cfg := node.LocalConfig()
		cfg.Identity, cfg.Credential, cfg.Policy = ag.Identity, ag.Credential, trust.DefaultPolicy(m.Anchor.Public())
		n, err := node.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n.SetHostOptions(opt)
		if err := n.Start(context.Background()); err == nil {
			n.Close()
			t.Fatalf("a node started with %s in HostOptions", name)
		}
	}
}

// An outsider that opens many admission streams at once on one connection
// gets one hello checked (and audited), not one per stream.
func TestParallelHellosCheckedOnce(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	worker := m.Agents["worker"].Node
	out := outsiderHost(t)
	if err := out.Connect(ctx, peer.AddrInfo{ID: worker.ID(), Addrs: worker.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	var streams []network.Stream
	for range 50 {
		s, err := out.NewStream(ctx, worker.ID(), wire.ProtocolAdmission)
		if err != nil {
			break
		}
		streams = append(streams, s)
	}
	if len(streams) < 10 {
		t.Fatalf("only %d admission streams opened", len(streams))
	}
	start := make(chan struct{})
	for _, s := range streams {
		go func() {
			<-start
			_ = msgio.NewVarintWriter(s).WriteMsg([]byte("not a hello"))
		}()
	}
	close(start)
	waitClosed(t, out, worker.ID())
	checked := 0
	for _, a := range m.Audit() {
		if a.Kind == "admission" && a.Sender == out.ID().String() {
			checked++
		}
	}
	if checked == 0 || checked > 2 {
		t.Fatalf("%d hellos of %d streams checked, want 1", checked, len(streams))
	}
}

// Fresh identities dialing all at once get the TLS handshake only within
// their source's budget: connections pending admission count against it,
// so 128 silent dials in parallel cost the node at most 64 handshakes
// before the first of them fails.
func TestParallelFreshDialsAreBounded(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) { parallelFreshDials(t, transport) })
	}
}

func parallelFreshDials(t *testing.T, transport string) {
	m, _ := testMesh(t, transport)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	worker := m.Agents["worker"].Node
	addrs := peer.AddrInfo{ID: worker.ID(), Addrs: worker.Host().Addrs()}
	const attempts = 128
	hosts := make([]host.Host, attempts)
	tpt := libp2p.Transport(tcp.NewTCPTransport)
	if transport == "quic" {
		tpt = libp2p.Transport(quic.NewTransport)
	}
	for i := range hosts {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
			tpt, libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		hosts[i] = h
	}
	var handshakes atomic.Int64
	start := make(chan struct{})
	done := make(chan struct{}, attempts)
	for _, h := range hosts {
		go func() {
			defer func() { done <- struct{}{} }()
			<-start
			// A completed TLS handshake (the client finishes first); it
			// then stays silent.
			if h.Connect(ctx, addrs) == nil {
				handshakes.Add(1)
			}
		}()
	}
	began := time.Now()
	close(start)
	for range attempts {
		<-done
	}
	elapsed := time.Since(began)
	if elapsed > 2*time.Second {
		t.Logf("the dials took %s, past the admission deadline: the budget refilled meanwhile", elapsed)
	}
	if limit := int64(sourceBurstForTest + 16*elapsed.Seconds() + 4); handshakes.Load() > limit {
		t.Fatalf("%d of %d parallel fresh identities got a handshake in %s; the bound is %d", handshakes.Load(), attempts, elapsed.Round(time.Millisecond), limit)
	}
	if handshakes.Load() == 0 {
		t.Fatal("no handshake at all: the test measured nothing")
	}
	t.Logf("%d of %d parallel fresh identities got a handshake in %s", handshakes.Load(), attempts, elapsed.Round(time.Millisecond))
}

const sourceBurstForTest = 64

// An admitted insider that sends its hello again and again on new
// admission streams gets a few checked and then one a heartbeat, each
// check a signature and an audit line.
func TestRepeatedHellosAreRateLimited(t *testing.T) {
	m, _ := convergedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mal, worker := m.Agents["mallory"].Node, m.Agents["worker"].Node
	rec, err := node.CurrentRecord(mal)
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Announcement: rec.Proto()})
	accepted := func() int {
		n := 0
		for _, a := range m.Audit() {
			if a.Kind == "admission" && a.Decision == "accept" && a.Sender == mal.ID().String() && a.Recipient == worker.ID().String() {
				n++
			}
		}
		return n
	}
	before := accepted()
	start := time.Now()
	const sent = 50
	for range sent {
		s, err := mal.Host().NewStream(ctx, worker.ID(), wire.ProtocolAdmission)
		if err != nil {
			t.Fatal(err)
		}
		_ = msgio.NewVarintWriter(s).WriteMsg(hello)
		_, _ = msgio.NewVarintReaderSize(s, 1<<16).ReadMsg()
		s.Close()
	}
	elapsed := time.Since(start)
	checked := accepted() - before
	if limit := 4 + int(elapsed/(250*time.Millisecond)) + 1; checked > limit {
		t.Fatalf("%d of %d hellos checked in %s; the bound is %d", checked, sent, elapsed.Round(time.Millisecond), limit)
	}
	t.Logf("%d of %d repeated hellos checked in %s", checked, sent, elapsed.Round(time.Millisecond))
}
