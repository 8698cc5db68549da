//go:build meshsim

package node_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// meshsub is the gossipsub protocol the insiders speak by hand.
const meshsub = "/meshsub/1.1.0"

// insiderHost is a plain libp2p host with an enrolled identity that is
// admitted by target through a hello sent by hand: it runs no pubsub
// router (it reads and discards what the target's router sends), so the
// pubsub frames it writes are all the target gets from it.
func insiderHost(t *testing.T, ctx context.Context, m *simulations.Mesh, name string, target *node.Node) host.Host {
	t.Helper()
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cred, err := trust.IssueCredential(m.Anchor, id.Public(), name, now.Add(-time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(id.Libp2pKey()), libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	// The target's router lists as its peers only those it can write to.
	h.SetStreamHandler(meshsub, func(s network.Stream) { _, _ = io.Copy(io.Discard, s); s.Reset() })
	// A long heartbeat interval keeps it listed for the test without beats.
	rec, err := discovery.NewRecord(id, cred, nil, 1, time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := proto.Marshal(&protocolpb.Hello{Version: protocol.Version, Announcement: rec.Proto()})
	if err := h.Connect(ctx, peer.AddrInfo{ID: target.ID(), Addrs: target.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := h.NewStream(ctx, target.ID(), wire.ProtocolAdmission)
	if err != nil {
		t.Fatal(err)
	}
	if err := msgio.NewVarintWriter(s).WriteMsg(hello); err != nil {
		t.Fatal(err)
	}
	if _, err := msgio.NewVarintReaderSize(s, 1<<16).ReadMsg(); err != nil {
		t.Fatalf("%s not admitted: %v", name, err)
	}
	s.Close()
	return h
}

// subRPC is one pubsub RPC that subscribes to topics.
func subRPC(topics ...string) []byte {
	rpc := &pb.RPC{}
	for _, tp := range topics {
		rpc.Subscriptions = append(rpc.Subscriptions, &pb.RPC_SubOpts{Topicid: proto.String(tp), Subscribe: proto.Bool(true)})
	}
	b, _ := proto.Marshal(rpc)
	return b
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// An enrolled insider that claims 200 000 made-up topics (valid names, in
// RPCs of 200, under the per-RPC limit) is cut off past 1 024 subscription
// changes (then 32 a second); the router keeps at most 256 of them
// meanwhile, and the target's heap does not grow with the claim; while a second insider opens and closes pubsub streams (each
// close makes the router scan every topic it knows), honest messages
// between the target and an honest node keep flowing. (Before the filter:
// every topic kept, heap +~75 MiB, honest messages delayed by seconds.)
// The heap is the test process's, which holds all the nodes.
func TestSubscriptionFloodIsBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The insiders are bare hosts that never heartbeat: a DeadAfter longer
	// than the test, so that a slow run (-race) does not close them.
	m, err := simulations.NewMesh(ctx, []string{"target", "honest"}, simulations.Options{DeadAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	target, honest := m.Agents["target"].Node, m.Agents["honest"].Node
	if _, err := m.Grant("honest", []string{"publish:tasks"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	sub, err := target.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := target.Subscribe("other"); err != nil {
		t.Fatal(err)
	}
	if _, err := honest.Subscribe("tasks"); err != nil {
		t.Fatal(err)
	}
	stamp := func() []byte { return binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())) }
	if err := simulations.WaitFor(10*time.Second, func() error {
		if err := honest.Publish(ctx, "tasks", "publish:tasks", stamp()); err != nil {
			return err
		}
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := sub.Next(c)
		return err
	}); err != nil {
		t.Fatalf("no honest message before the flood: %v", err)
	}

	flooder := insiderHost(t, ctx, m, "flooder", target)
	churner := insiderHost(t, ctx, m, "churner", target)
	before := heapAfterGC()

	// Honest traffic: one message every 50 ms, its latency measured at the
	// target, from the flood's start to a second after the churn ends.
	latencies := make(chan time.Duration, 1024)
	go func() {
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				close(latencies)
				return
			}
			latencies <- time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(msg.Body))))
		}
	}()
	stopHonest := make(chan struct{})
	sentc := make(chan int)
	go func() {
		sent := 0
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopHonest:
				sentc <- sent
				return
			case <-tick.C:
				if honest.Publish(ctx, "tasks", "publish:tasks", stamp()) == nil {
					sent++
				}
			}
		}
	}()

	const claimed, batch = 200_000, 200
	s, err := flooder.NewStream(ctx, target.ID(), meshsub)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	w := msgio.NewVarintWriter(s)
	// One RPC over the per-RPC limit is dropped whole, a joined topic with
	// it. RPCs of one stream are handled in order: once the router knows
	// the flooder in a topic the target joined, it has handled the first.
	if err := w.WriteMsg(subRPC(append([]string{"other"}, make([]string, 256)...)...)); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteMsg(subRPC("tasks")); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(20*time.Second, func() error {
		if !slices.Contains(node.RouterPeers(target, "tasks"), flooder.ID()) {
			return fmt.Errorf("the first RPCs not handled")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(node.RouterPeers(target, "other"), flooder.ID()) {
		t.Error("an RPC of 257 subscriptions was handled")
	}
	// The flood: past 1 024 subscription changes at once (then 32 a
	// second) the target cuts the flooder off.
	floodStart := time.Now()
	sentTopics := 0
	for i := 0; i < claimed && target.Host().Network().Connectedness(flooder.ID()) == network.Connected; i += batch {
		topics := make([]string, batch)
		for j := range topics {
			topics[j] = fmt.Sprintf("t%d", i+j)
		}
		if w.WriteMsg(subRPC(topics...)) != nil {
			break
		}
		sentTopics += batch
	}
	if err := simulations.WaitFor(20*time.Second, func() error {
		if target.Host().Network().Connectedness(flooder.ID()) == network.Connected {
			return fmt.Errorf("the flooder is still connected after %d topics", sentTopics)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	handled := time.Since(floodStart)
	grown := int64(heapAfterGC()) - int64(before)
	known := 0
	const every = 100
	for i := 0; i < claimed; i += every {
		if slices.Contains(node.RouterPeers(target, fmt.Sprintf("t%d", i)), flooder.ID()) {
			known++
		}
	}
	known *= every

	// Stream churn by the other insider: each close makes the router scan the topics it knows.
	churnEnd := time.Now().Add(2 * time.Second)
	closes := 0
	for time.Now().Before(churnEnd) {
		cs, err := churner.NewStream(ctx, target.ID(), meshsub)
		if err != nil {
			t.Fatalf("churn: %v", err)
		}
		_ = msgio.NewVarintWriter(cs).WriteMsg(subRPC())
		cs.Close()
		closes++
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(time.Second)
	close(stopHonest)
	sent := <-sentc
	cancel()
	var lat []time.Duration
	for l := range latencies {
		lat = append(lat, l)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	const onTimeBound = 500 * time.Millisecond
	onTime := 0
	for _, l := range lat {
		if l < onTimeBound {
			onTime++
		}
	}
	p50, worst := time.Duration(0), time.Duration(0)
	if len(lat) > 0 {
		p50, worst = lat[len(lat)/2], lat[len(lat)-1]
	}
	t.Logf("flooder cut off after %d topics sent (%s); router keeps ~%d of them; heap %+.1f MiB; %d stream closes; honest %d sent, %d delivered within %s, p50 %s, worst %s",
		sentTopics, handled.Round(time.Millisecond), known, float64(grown)/(1<<20), closes, sent, onTime, onTimeBound, p50.Round(time.Millisecond), worst.Round(time.Millisecond))
	if known > 1000 {
		t.Errorf("router keeps ~%d of the %d topics claimed, want at most a few hundred", known, claimed)
	}
	if grown > 16<<20 {
		t.Errorf("heap grew %.1f MiB under the flood, want under 16 MiB", float64(grown)/(1<<20))
	}
	if onTime*10 < sent*9 {
		t.Errorf("%d of %d honest messages delivered within %s during the flood", onTime, sent, onTimeBound)
	}
}

// A topic no token can grant is refused with a reason code, on Subscribe
// and on Publish; a node joins at most 256 topics.
func TestSubscribeRefusesBadTopics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"solo"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	n := m.Agents["solo"].Node
	for _, bad := range []string{"", "Tasks", "a/b", "x\n", strings.Repeat("a", 300)} {
		if _, err := n.Subscribe(bad); trust.CodeOf(err) != trust.CodeMalformed {
			t.Errorf("Subscribe(%q): %v", bad, err)
		}
		if err := n.Publish(ctx, bad, protocol.TopicAction(bad), nil); trust.CodeOf(err) != trust.CodeMalformed {
			t.Errorf("Publish(%q): %v", bad, err)
		}
	}
	// The registry's two topics count: t2 to t255 are the 256 topics.
	for i := 2; i < 256; i++ {
		if _, err := n.Subscribe(fmt.Sprintf("t%d", i)); err != nil {
			t.Fatalf("topic %d: %v", i+1, err)
		}
	}
	if _, err := n.Subscribe("t256"); trust.CodeOf(err) != trust.CodeFull {
		t.Fatalf("the 257th topic: %v, want refused as full", err)
	}
	if _, err := n.Subscribe("t2"); err != nil {
		t.Fatalf("a topic already joined: %v", err)
	}
}

// A node keeps a peer's subscription to a topic it has not joined yet, so
// that when it joins the topic later it publishes to that peer (which
// does not announce its subscription again).
func TestSubscriptionBeforeJoinIsKept(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"early", "late"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	early, late := m.Agents["early"].Node, m.Agents["late"].Node
	sub, err := early.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		if !slices.Contains(node.RouterPeers(late, "tasks"), early.ID()) {
			return fmt.Errorf("late does not know early's subscription")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Grant("late", []string{"publish:tasks"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		if err := late.Publish(ctx, "tasks", "publish:tasks", []byte("late")); err != nil {
			return err
		}
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := sub.Next(c)
		return err
	}); err != nil {
		t.Fatalf("late's message never reached early: %v", err)
	}
}
