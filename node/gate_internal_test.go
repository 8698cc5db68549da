package node

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/gate"
	"github.com/meshagent/meshagent/node/internal/records"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// A peer charged lately gets no more messages of one RPC checked than its
// budget has left, and none once throttled; an uncharged peer's RPCs pass
// whole.
func TestInspectRPCCapsChargedPeers(t *testing.T) {
	n, other, _ := nodeListing(t, time.Second)
	from := other.PeerID()
	rpcOf := func(k int) *pubsub.RPC {
		r := &pubsub.RPC{}
		for range k {
			r.Publish = append(r.Publish, &pubsubpb.Message{Data: []byte("x")})
		}
		return r
	}
	r := rpcOf(400)
	if err := n.inspectRPC(from, r); err != nil || len(r.Publish) != 400 {
		t.Fatalf("an uncharged peer's RPC: %d of 400 kept, %v", len(r.Publish), err)
	}
	for range gate.RejectBurst - 5 {
		n.gate.Penalize(from, protocol.CodeNoToken)
	}
	r = rpcOf(400)
	_ = n.inspectRPC(from, r)
	if len(r.Publish) > 6 {
		t.Fatalf("a peer with about 5 rejections left: %d of 400 messages kept", len(r.Publish))
	}
	for range 10 {
		n.gate.Penalize(from, protocol.CodeNoToken)
	}
	r = rpcOf(400)
	_ = n.inspectRPC(from, r)
	if len(r.Publish) != 0 {
		t.Fatalf("a throttled peer: %d of 400 messages kept", len(r.Publish))
	}
}

// New records of a listed agent are checked at most records.RecordBurst at once
// and one a heartbeat; past that they are refused before their signature
// check (here the signatures are broken: the refusal says flood, not
// bad_signature), so an insider's record flood costs each node little and
// is not relayed.
func TestRecordFloodRefusedBeforeTheCheck(t *testing.T) {
	n, other, cred := nodeListing(t, time.Hour) // a heartbeat of an hour: no refill during the test
	now := time.Now()
	var codes []trust.Code
	for i := range 10 {
		rec, _ := discovery.NewRecord(other, cred, nil, uint64(2+i), time.Second, now)
		a := rec.Proto()
		a.Signature = append([]byte(nil), a.Signature...)
		a.Signature[0] ^= 1
		_, _, err := n.records.Check(a, other.Public())
		codes = append(codes, trust.CodeOf(err))
	}
	for i, c := range codes {
		want := trust.CodeBadSignature
		if i >= records.RecordBurst {
			want = protocol.CodeFlood
		}
		if c != want {
			t.Fatalf("record %d: %s, want %s (all: %v)", i, c, want, codes)
		}
	}
}

// nodeListing builds a node (not started) with the given heartbeat whose
// registry lists one other agent, by a record of seq 1; it returns the
// node and that agent's identity and credential.
func nodeListing(t *testing.T, hb time.Duration) (*Node, *trust.Identity, *trust.Credential) {
	t.Helper()
	anchor, _ := trust.GenerateAnchorKey(rand.Reader)
	now := time.Now()
	ids := make([]*trust.Identity, 2)
	creds := make([]*trust.Credential, 2)
	for i := range ids {
		ids[i], _ = trust.GenerateIdentity(rand.Reader)
		creds[i], _ = trust.IssueCredential(anchor, ids[i].Public(), fmt.Sprintf("agent-%d", i), now.Add(-time.Second), time.Hour)
	}
	cfg := LocalConfig()
	cfg.HeartbeatInterval, cfg.DeadAfter = hb, 3*hb
	cfg.Identity, cfg.Credential, cfg.Policy = ids[0], creds[0], trust.DefaultPolicy(anchor.Public())
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := discovery.NewRecord(ids[1], creds[1], nil, 1, time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.registry.Announce(rec, discovery.Direct, now); err != nil {
		t.Fatal(err)
	}
	return n, ids[1], creds[1]
}

// A peer cut off from pubsub's event loop (here for a subscription flood)
// has its connections closed without waiting for Node.mu: join holds that
// lock while it waits on the same event loop, so waiting for it there
// would deadlock the node (found reading the lock order, issue 13).
func TestCutOffDoesNotWaitForTheNodeLock(t *testing.T) {
	n, other, _ := nodeListing(t, time.Hour)
	flood := &pubsub.RPC{}
	for i := range subscriptionBurst + 1 {
		topic := fmt.Sprintf("t%d", i)
		flood.Subscriptions = append(flood.Subscriptions, &pubsubpb.RPC_SubOpts{Topicid: &topic})
	}
	n.mu.Lock() // as join holds it while it waits on the event loop
	done := make(chan error, 1)
	go func() { done <- n.inspectRPC(other.PeerID(), flood) }()
	select {
	case err := <-done:
		n.mu.Unlock()
		if err == nil || !n.gate.Refused(other.PeerID()) {
			t.Fatalf("a subscription flood was not cut off: %v", err)
		}
	case <-time.After(5 * time.Second):
		n.mu.Unlock()
		<-done
		t.Fatal("cutting a peer off waited for Node.mu: the event loop would deadlock with join")
	}
}
