//go:build meshsim

package node_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

func peerInfo(n *node.Node) peer.AddrInfo { return peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()} }

// delivery publishes count messages from n1 on topic and returns the
// fraction that n2's subscription received, while during() runs beside.
func delivery(t *testing.T, n1, n2 *node.Node, topic string, count int, during func(i int)) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := n2.Subscribe(topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel()
	var mu sync.Mutex
	seen := map[string]bool{}
	go func() {
		for {
			msg, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if msg.From == n1.ID() {
				mu.Lock()
				seen[string(msg.Body)] = true
				mu.Unlock()
			}
		}
	}()
	// Wait until the two are gossipsub neighbours on the topic.
	if err := simulations.WaitFor(10*time.Second, func() error {
		_ = n1.Publish(ctx, topic, "publish:tasks", []byte("warm-up"))
		mu.Lock()
		defer mu.Unlock()
		if !seen["warm-up"] {
			return fmt.Errorf("n2 does not get n1's messages yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := range count {
		during(i)
		if err := n1.Publish(ctx, topic, "publish:tasks", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Give the last ones time to arrive.
	_ = simulations.WaitFor(3*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !seen[strconv.Itoa(count-1)] {
			return fmt.Errorf("last message not in")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	got := 0
	for i := range count {
		if seen[strconv.Itoa(i)] {
			got++
		}
	}
	return float64(got) / float64(count)
}

// An enrolled insider wraps each of its envelopes in two pubsub messages
// (two hosts with its one identity, so two pubsub sequence numbers) and
// hands one to n1 and one to n2. The copies are one message to gossipsub:
// neither honest node refuses the other's forward as a replay, and n1's own
// messages keep reaching n2. (Before, n1→n2 delivery fell to 0–1 %.)
func TestOneEnvelopeTwoPubsubMessages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	oneLink := simulations.Options{Configure: func(_ string, c *node.Config) { c.BeatDegree = 1 }}
	m, err := simulations.NewMesh(ctx, []string{"n1", "n2", "mallory"}, oneLink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	mal := m.Agents["mallory"]
	// mallory's second host: the same identity and credential.
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential, cfg.Policy = mal.Identity, mal.Credential, trust.DefaultPolicy(m.Anchor.Public())
	cfg.ListenAddrs, cfg.BeatDegree = []string{"/ip4/127.0.0.1/tcp/0"}, 1
	twin, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := twin.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = twin.Close() })
	if err := m.Connect(ctx, "n1", "n2"); err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, "mallory", "n1"); err != nil {
		t.Fatal(err)
	}
	if err := twin.Join(ctx, peerInfo(m.Agents["n2"].Node)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"n1", "mallory"} {
		if _, err := m.Grant(name, []string{"publish:tasks"}, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	tok := mal.Node.Tokens()[0]
	twin.AddToken(tok)
	n1, n2 := m.Agents["n1"].Node, m.Agents["n2"].Node
	if _, err := n1.Subscribe("tasks"); err != nil {
		t.Fatal(err)
	}
	// Wait until n1 forwards mallory's messages to n2 (gossipsub grafted
	// n2 into n1's mesh): only then do the two copies meet.
	sub2, err := n2.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		_ = mal.Node.Publish(ctx, "tasks", "publish:tasks", []byte("once"))
		c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		for {
			msg, err := sub2.Next(c)
			if err != nil {
				return fmt.Errorf("n1 does not forward mallory's messages to n2 yet")
			}
			if msg.From == mal.ID() {
				return nil
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	sub2.Cancel()
	wrapped := 0
	ratio := delivery(t, n1, n2, "tasks", 200, func(i int) {
		if i%3 != 0 {
			return
		}
		raw, err := mal.Node.SealMessage("tasks", "publish:tasks", []byte("twice"), tok)
		if err != nil {
			t.Fatal(err)
		}
		_ = mal.Node.PublishRaw(ctx, "tasks", raw) // reaches n1
		_ = twin.PublishRaw(ctx, "tasks", raw)     // reaches n2
		wrapped++
	})
	replays := 0
	for _, a := range m.Audit() {
		if a.Kind == "message" && a.Reason == string(protocol.CodeReplay) {
			replays++
		}
	}
	t.Logf("n1→n2 delivery %.2f with %d envelopes wrapped twice; %d replay rejections", ratio, wrapped, replays)
	if ratio < 0.95 {
		t.Fatalf("n1→n2 delivery %.2f under the double wrap, want ≥ 0.95", ratio)
	}
	if replays != 0 {
		t.Fatalf("%d replay rejections: the two copies were taken for two messages", replays)
	}
}

// During an anchor rotation, n1 already trusts the new anchor and n2 not
// yet: n1 forwards a sender's new-anchor messages to n2, which refuses
// them (untrusted_root) but must not blame n1 for it: n1's own messages
// keep reaching n2. (Before, delivery fell from 20/20 to 14/30.)
func TestRotationDoesNotBlameTheForwarder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	next, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := simulations.NewMesh(ctx, []string{"sender", "n1", "n2"}, simulations.Options{Configure: func(name string, c *node.Config) {
		c.BeatDegree = 1
		if name != "n2" { // n2 has not taken the new anchor yet
			c.Policy.Anchors = append(c.Policy.Anchors, next.Public())
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.Connect(ctx, "sender", "n1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Connect(ctx, "n1", "n2"); err != nil {
		t.Fatal(err)
	}
	snd := m.Agents["sender"]
	now := time.Now()
	newTok, err := trust.IssueToken(next, snd.Identity.Public(), trust.Grant{Scopes: []string{"publish:tasks"}, Expires: now.Add(time.Hour)}, now)
	if err != nil {
		t.Fatal(err)
	}
	snd.Node.AddToken(newTok)
	if _, err := m.Grant("n1", []string{"publish:tasks"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	n1, n2 := m.Agents["n1"].Node, m.Agents["n2"].Node
	if _, err := n1.Subscribe("tasks"); err != nil {
		t.Fatal(err)
	}
	sent := 0
	ratio := delivery(t, n1, n2, "tasks", 100, func(int) {
		if snd.Node.Publish(ctx, "tasks", "publish:tasks", []byte("new anchor")) == nil {
			sent++
		}
	})
	untrusted := 0
	for _, a := range m.Audit() {
		if a.Kind == "message" && a.Reason == string(trust.CodeUntrustedRoot) {
			untrusted++
		}
	}
	t.Logf("n1→n2 delivery %.2f; %d new-anchor messages sent, %d refused by n2 as untrusted_root", ratio, sent, untrusted)
	if untrusted == 0 {
		t.Fatal("n2 refused no new-anchor message: the test did not play the rotation")
	}
	if ratio < 0.95 {
		t.Fatalf("n1→n2 delivery %.2f during the rotation, want ≥ 0.95", ratio)
	}
}

// Forgeries an insider publishes on the registry topic (leaves of a listed
// agent with a signature that does not verify) are audited and charged to
// it, as on every other path, and lower its pubsub score on the topic: the
// receiver soon ignores it (graylisted), so that a flood costs it a few
// signature checks, not one per forgery.
func TestRegistryTopicForgeriesAreCharged(t *testing.T) {
	m, _ := convergedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mal := m.Agents["mallory"].Node
	orch := m.Agents["orchestrator"]
	const sent = 2000
	for i := range sent {
		l := discovery.SignLeave(orch.Identity, 1<<62+uint64(i), time.Now())
		l.Signature[0] ^= 1 // forged
		raw, _ := proto.Marshal(&protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Leave{Leave: l}})
		_ = mal.PublishRaw(ctx, wire.TopicRegistry, raw)
	}
	var checked int
	if err := simulations.WaitFor(10*time.Second, func() error {
		checked = countAudited(m, "leave", "mallory", "worker", trust.CodeBadSignature)
		if checked == 0 {
			return fmt.Errorf("no forged leave audited yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if checked > sent/10 {
		t.Fatalf("the worker checked %d of %d forged leaves: the forger was not cut off", checked, sent)
	}
	if st := m.StateOf("worker", "orchestrator"); st != "alive" {
		t.Fatalf("the worker sees the orchestrator %s after forged leaves", st)
	}
	t.Logf("the worker checked %d of %d forged leaves", checked, sent)
}

// A token for publish:tasks publishes on topic tasks only: a message it
// signs for topic payments is refused (topic_not_granted) by the
// publisher's own node, and never reaches a subscriber. (Every receiver
// runs the same decision function: TestDecideRejects has the case.)
func TestTokenPublishesOnItsTopicOnly(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := m.Grant("mallory", []string{"publish:tasks"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	mal := m.Agents["mallory"].Node
	sub, err := m.Agents["worker"].Node.Subscribe("payments")
	if err != nil {
		t.Fatal(err)
	}
	if err := mal.Publish(ctx, "payments", "publish:tasks", []byte("pay me")); err == nil || !strings.Contains(err.Error(), string(protocol.CodeTopicNotGranted)) {
		t.Fatalf("Publish on payments with publish:tasks: %v, want topic_not_granted", err)
	}
	// Sealed by hand and published anyway: the node's own check of what
	// it publishes refuses it, audited.
	raw, err := mal.SealMessage("payments", "publish:tasks", []byte("pay me"), mal.Tokens()[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := mal.PublishRaw(ctx, "payments", raw); err == nil {
		t.Fatal("PublishRaw of a message its action does not grant on that topic succeeded")
	}
	refused := false
	for _, a := range m.Audit() {
		refused = refused || a.Kind == "message" && a.Recipient == "payments" && a.Reason == string(protocol.CodeTopicNotGranted)
	}
	if !refused {
		t.Fatal("the refusal was not audited")
	}
	c, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if msg, err := sub.Next(c); err == nil {
		t.Fatalf("the worker delivered %q from %s on payments", msg.Body, msg.From)
	}
}

// What an author delivers itself is charged to it when it could have
// known better whatever the receiver's state, even if that is no
// forwarder's fault (here: messages on topic tasks whose action is not
// publish:tasks, which older relays do not refuse): a host with mallory's
// key, which passes the gate as mallory, publishes them straight to the
// worker until the worker throttles it; what it sends then is dropped
// before any check.
func TestAuthorIsChargedForWhatItSendsItself(t *testing.T) {
	m, _ := convergedMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mal := m.Agents["mallory"]
	worker := m.Agents["worker"].Node
	topic, tok, _ := authorHost(ctx, t, m)
	if err := simulations.WaitFor(20*time.Second, func() error {
		for range 20 {
			raw, err := protocol.Seal(mal.Identity, &protocol.Envelope{Kind: protocol.KindMessage, RecipientTopic: "tasks",
				Action: "publish:reports", Payload: []byte("elsewhere"), Token: tok}, time.Now())
			if err != nil {
				return err
			}
			_ = topic.Publish(ctx, raw)
		}
		for _, a := range m.Audit() {
			if a.Reason == string(protocol.CodeFlood) && a.Sender == mal.ID().String() && a.Recipient == worker.ID().String() {
				return nil
			}
		}
		n := 0
		for _, a := range m.Audit() {
			if a.Kind == "message" && a.Sender == mal.ID().String() {
				n++
			}
		}
		return fmt.Errorf("mallory not throttled yet (%d messages audited)", n)
	}); err != nil {
		t.Fatal(err)
	}
	// Throttled, what it sends is dropped unchecked and unaudited.
	audited := func() int {
		n := 0
		for _, a := range m.Audit() {
			if a.Kind == "message" && a.Sender == mal.ID().String() {
				n++
			}
		}
		return n
	}
	before, throttled := audited(), worker.Stats().Throttled
	for range 200 {
		raw, _ := protocol.Seal(mal.Identity, &protocol.Envelope{Kind: protocol.KindMessage, RecipientTopic: "tasks",
			Action: "publish:reports", Payload: []byte("elsewhere"), Token: tok}, time.Now())
		_ = topic.Publish(ctx, raw)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		if worker.Stats().Throttled-throttled < 100 {
			return fmt.Errorf("%d of 200 dropped unchecked", worker.Stats().Throttled-throttled)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := audited() - before; got > 50 {
		t.Fatalf("%d of 200 messages of a throttled author were checked and audited", got)
	}
}

// authorHost replaces mallory's node with a bare pubsub host with
// mallory's key, which passes the gate as mallory and publishes what the
// test seals straight to the worker, subscribed to topic tasks. It
// returns the host's tasks topic and a token of mallory's for
// publish:tasks and publish:reports, and the worker's subscription.
func authorHost(ctx context.Context, t *testing.T, m *simulations.Mesh) (*pubsub.Topic, *trust.Token, *node.Subscription) {
	t.Helper()
	mal := m.Agents["mallory"]
	tok, err := m.Grant("mallory", []string{"publish:tasks", "publish:reports"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	worker := m.Agents["worker"].Node
	sub, err := worker.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	// The host with mallory's key replaces mallory's node (pubsub keeps one
	// stream per peer ID).
	m.Crash("mallory")
	if err := simulations.WaitFor(10*time.Second, func() error {
		if len(worker.Host().Network().ConnsToPeer(mal.ID())) != 0 {
			return fmt.Errorf("the worker is still connected to mallory's node")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(mal.Identity.Libp2pKey()), libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ps, err := pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join("tasks")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Connect(ctx, peerInfo(worker)); err != nil {
		t.Fatal(err)
	}
	return topic, tok, sub
}
