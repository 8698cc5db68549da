package node

import (
	"context"
	"slices"
	"sync"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/wire"
)

// upkeep is what the node keeps for the registry besides the services:
// the subscribers to registry events and what peers may make it do.
type upkeep struct {
	mu        sync.Mutex
	listeners []func(discovery.Event)
	// Per-key limits of what peers make this node do: answers per peer
	// and protocol (sync, revocation pull, hello, renewal).
	serving *limit.Keyed
	// ownRefused counts, per peer, its own pubsub messages refused and not
	// charged (stale, dead, replay...).
	ownRefused *limit.Keyed
	// subscriptions counts each peer's pubsub subscription changes.
	subscriptions *limit.Keyed
}

// OnEvent registers f to be called with every registry event (an agent
// joined, became suspect, dead, alive again, or was removed). f must not
// block.
func (n *Node) OnEvent(f func(discovery.Event)) {
	n.live.mu.Lock()
	defer n.live.mu.Unlock()
	n.live.listeners = append(n.live.listeners, f)
}

// emit audits events, closes the connections of agents that died or were
// removed, and tells the listeners.
func (n *Node) emit(evs []discovery.Event) {
	if len(evs) == 0 {
		return
	}
	n.live.mu.Lock()
	ls := slices.Clone(n.live.listeners)
	n.live.mu.Unlock()
	for _, e := range evs {
		r := n.record(audit.In, audit.Liveness, e.Agent.String())
		r.Time, r.Decision, r.Reason = e.At, audit.Removed, e.Reason
		if e.To != 0 {
			r.Decision = audit.Decision(e.To.String()) // alive, suspect or dead
		}
		n.audit.Write(r)
		if e.To == discovery.Dead || e.To == 0 {
			if h := n.host(); h != nil {
				_ = h.Network().ClosePeer(e.Agent.PeerID())
			}
		}
		if e.From == discovery.Dead && e.To == discovery.Alive {
			// It signed something since: forget the dials that failed
			// while it was away (a partition), or calls to it would
			// fail on the swarm's backoff for up to minutes.
			if h := n.host(); h != nil {
				if b, ok := h.Network().(interface{ Backoff() *swarm.DialBackoff }); ok {
					b.Backoff().Clear(e.Agent.PeerID())
				}
			}
		}
		for _, f := range ls {
			f(e)
		}
	}
}

// startRegistry joins the registry and revocation topics, registers the
// registry's protocols, and starts the overlay and the liveness loops.
func (n *Node) startRegistry() error {
	if err := n.ps.RegisterTopicValidator(wire.TopicRegistry, n.registryValidator, pubsub.WithValidatorInline(true)); err != nil {
		return err
	}
	if err := n.ps.RegisterTopicValidator(wire.TopicRevocations, n.revocationValidator, pubsub.WithValidatorInline(true)); err != nil {
		return err
	}
	for _, name := range []string{wire.TopicRegistry, wire.TopicRevocations} {
		t, err := n.ps.Join(name)
		if err != nil {
			return err
		}
		// Score what the forwarders deliver here as on every topic: an
		// invalid delivery lowers the forwarder's score.
		if err := t.SetScoreParams(topicScoreParams()); err != nil {
			return err
		}
		sub, err := t.Subscribe()
		if err != nil {
			return err
		}
		n.topics[name] = t
		go func() { // drain: the validators did the work
			for {
				if _, err := sub.Next(n.ctx); err != nil {
					return
				}
			}
		}()
	}
	n.h.SetStreamHandler(wire.ProtocolSync, n.gateWrap(n.syncer.Handle))
	n.h.SetStreamHandler(wire.ProtocolRevocations, n.gateWrap(n.syncer.Handle))
	n.h.SetStreamHandler(wire.ProtocolLeave, n.gateWrap(n.handleLeave))
	n.beats.Start(n.ctx, n.h)
	n.h.SetStreamHandler(wire.ProtocolBeat, n.gateWrap(n.beats.HandleStream))
	n.own.Run(n.ctx)
	return nil
}

func (n *Node) publishRegistry(m *protocolpb.RegistryMessage) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	n.mu.Lock()
	t := n.topics[wire.TopicRegistry]
	n.mu.Unlock()
	if t == nil {
		return ErrNotStarted
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.HeartbeatInterval)
	defer cancel()
	if err := t.Publish(ctx, b); err != nil {
		return err
	}
	if m.GetAnnounce() != nil {
		n.recordsSent.Add(1)
	}
	return nil
}

// learn enters a verified record from src in the registry, tells the
// listeners, and hands the records of agents that just joined to the beat
// overlay (the second path for what every node must learn at once).
func (n *Node) learn(rec *discovery.Record, src discovery.Source) error {
	evs, err := n.registry.Announce(rec, src, n.now())
	n.emit(evs)
	n.beats.PushRecords(evs)
	return err
}
