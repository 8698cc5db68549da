package subfilter

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/wire"
)

func subOpts(subscribe bool, topics ...string) []*pubsubpb.RPC_SubOpts {
	var subs []*pubsubpb.RPC_SubOpts
	for _, t := range topics {
		subs = append(subs, &pubsubpb.RPC_SubOpts{Topicid: proto.String(t), Subscribe: proto.Bool(subscribe)})
	}
	return subs
}

func topicNames(subs []*pubsubpb.RPC_SubOpts) []string {
	var ts []string
	for _, s := range subs {
		ts = append(ts, s.GetTopicid())
	}
	return ts
}

// The filter allows joining only names a token can grant (and the
// registry's), keeps every subscription to a joined topic, at most
// maxForeignTopics others per peer until they are given up or the peer
// leaves, and refuses an RPC of more than maxSubsPerRPC subscriptions.
func TestSubscriptionFilterBounds(t *testing.T) {
	f := newFilter()
	for _, bad := range []string{"", "Tasks", "a/b", "a:b", "publish:x", "-a", "x\n", "t*", strings.Repeat("a", 32), strings.Repeat("é", 8)} {
		if f.CanSubscribe(bad) {
			t.Errorf("CanSubscribe(%q) = true", bad)
		}
	}
	for _, good := range []string{"tasks", "a.b_c-1", strings.Repeat("a", 31), wire.TopicRegistry, wire.TopicRevocations} {
		if !f.CanSubscribe(good) {
			t.Errorf("CanSubscribe(%q) = false", good)
		}
	}
	wrapped := pubsub.WrapLimitSubscriptionFilter(f, maxSubsPerRPC)
	p, q := peer.ID("p"), peer.ID("q")
	claim := func(from peer.ID, subscribe bool, topics ...string) []string {
		t.Helper()
		kept, err := wrapped.FilterIncomingSubscriptions(from, subOpts(subscribe, topics...))
		if err != nil {
			t.Fatal(err)
		}
		return topicNames(kept)
	}
	made := func(from, to int) []string {
		var ts []string
		for i := from; i < to; i++ {
			ts = append(ts, fmt.Sprintf("t%d", i))
		}
		return ts
	}
	kept := 0
	for i := 0; i < 3*maxForeignTopics; i += 100 {
		kept += len(claim(p, true, made(i, i+100)...))
	}
	if kept != maxForeignTopics {
		t.Fatalf("kept %d made-up topics of one peer, want %d", kept, maxForeignTopics)
	}
	if got := claim(p, true, "tasks", "Bad", "t0", made(1000, 1001)[0]); strings.Join(got, ",") != "tasks,t0" {
		t.Fatalf("at the cap: kept %v, want the joined topic and the known one", got)
	}
	if got := claim(q, true, "t9999"); len(got) != 1 {
		t.Fatalf("another peer's own count: kept %v", got)
	}
	if got := claim(p, false, "t0", "t5000"); len(got) != 2 {
		t.Fatalf("unsubscriptions: kept %v", got)
	}
	if got := claim(p, true, "t5001", "t5002"); strings.Join(got, ",") != "t5001" {
		t.Fatalf("after one unsubscription: kept %v, want one more", got)
	}
	f.forget(p)
	if got := claim(p, true, made(6000, 6000+maxForeignTopics)...); len(got) != maxForeignTopics {
		t.Fatalf("after the peer left: kept %d, want %d", len(got), maxForeignTopics)
	}
	if _, err := wrapped.FilterIncomingSubscriptions(q, subOpts(true, made(0, maxSubsPerRPC+1)...)); !errors.Is(err, pubsub.ErrTooManySubscriptions) {
		t.Fatalf("%d subscriptions in one RPC: %v", maxSubsPerRPC+1, err)
	}
}
