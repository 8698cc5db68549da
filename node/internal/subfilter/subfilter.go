// Package subfilter is the pubsub router's subscription filter: what the
// router keeps of each peer's subscriptions is bounded, and a node joins
// only topics a token can grant.
package subfilter

import (
	"sync"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Subscription bounds. A node joins at most MaxTopics topics, so the RPC
// that lists them all when a peer connects is never over maxSubsPerRPC;
// the router keeps, besides the topics this node joined, at most
// maxForeignTopics others for each peer, so that a topic this node joins
// later reaches the peers that joined it first (their subscription is not
// sent again).
const (
	MaxTopics        = 256
	maxSubsPerRPC    = MaxTopics
	maxForeignTopics = MaxTopics
)

// ValidTopic reports whether a topic may be joined: the registry's topics,
// or a name a token can grant (the resource of publish:TOPIC). Messages on
// any other topic are refused by every node, so no one needs it.
func ValidTopic(t string) bool {
	return t == wire.TopicRegistry || t == wire.TopicRevocations || trust.ValidateScope(protocol.TopicAction(t)) == nil
}

// New returns the router's subscription filter. An RPC with more
// than maxSubsPerRPC subscriptions is dropped whole by the router (its
// messages and gossip too, with no penalty; an honest node never sends
// one). Otherwise a subscription is kept if its topic is valid and either
// joined here or among the first maxForeignTopics others the peer claims;
// the rest are dropped silently. A peer's count is released when it
// unsubscribes or its last connection closes.
func New(net network.Network) pubsub.SubscriptionFilter {
	f := newFilter()
	net.Notify(&network.NotifyBundle{DisconnectedF: func(nw network.Network, c network.Conn) {
		if p := c.RemotePeer(); nw.Connectedness(p) != network.Connected {
			f.forget(p)
		}
	}})
	return pubsub.WrapLimitSubscriptionFilter(f, maxSubsPerRPC)
}

// filter is called from Join (CanSubscribe), from the router's event
// loop (FilterIncomingSubscriptions) and from network notifications.
type filter struct {
	mu      sync.Mutex
	joined  map[string]bool                 // topics this node joined
	foreign map[peer.ID]map[string]struct{} // other topics the router keeps, by peer
}

// CanSubscribe allows a valid topic. The router asks only when this node
// joins a topic, so the topics it allows are the ones this node joined
// (the registry's are joined without Node.join).
func (f *filter) CanSubscribe(topic string) bool {
	if !ValidTopic(topic) {
		return false
	}
	f.mu.Lock()
	f.joined[topic] = true
	f.mu.Unlock()
	return true
}

// FilterIncomingSubscriptions keeps what the router may hold of from's
// subscriptions; unsubscriptions pass and release their count.
func (f *filter) FilterIncomingSubscriptions(from peer.ID, subs []*pubsubpb.RPC_SubOpts) ([]*pubsubpb.RPC_SubOpts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mine := f.foreign[from]
	kept := make([]*pubsubpb.RPC_SubOpts, 0, len(subs))
	for _, s := range subs {
		t := s.GetTopicid()
		switch _, known := mine[t]; {
		case !ValidTopic(t):
			continue
		case !s.GetSubscribe():
			delete(mine, t)
		case f.joined[t], known:
		case len(mine) >= maxForeignTopics:
			continue
		default:
			if mine == nil {
				mine = map[string]struct{}{}
				f.foreign[from] = mine
			}
			mine[t] = struct{}{}
		}
		kept = append(kept, s)
	}
	if len(mine) == 0 {
		delete(f.foreign, from)
	}
	return kept, nil
}

func (f *filter) forget(p peer.ID) {
	f.mu.Lock()
	delete(f.foreign, p)
	f.mu.Unlock()
}

func newFilter() *filter {
	return &filter{joined: map[string]bool{}, foreign: map[peer.ID]map[string]struct{}{}}
}
