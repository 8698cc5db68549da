package node

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/node/internal/overlay"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/wire"
)

// liveness is the node's half of the registry: its own sequence numbers,
// its current record, and the subscribers to registry events.
type liveness struct {
	seq       atomic.Uint64
	mu        sync.Mutex
	record    *discovery.Record
	listeners []func(discovery.Event)
	// announceSoon asks the heartbeat loop for a full record at the next
	// beat (after an admission: peers that joined meanwhile may not know
	// this node), at most every announceMinGap beats.
	announceSoon atomic.Bool
	// Per-key limits of what peers make this node do: answers per peer
	// and protocol (sync, revocation pull, hello, renewal).
	serving *limit.Keyed
	// ownRefused counts, per peer, its own pubsub messages refused and not
	// charged (stale, dead, replay...).
	ownRefused *limit.Keyed
	// subscriptions counts each peer's pubsub subscription changes.
	subscriptions *limit.Keyed
}

func (n *Node) nextSeq() uint64 { return n.live.seq.Add(1) }

var errLeaving = errors.New("node: leaving: no new record after the leave")

// currentRecord returns this node's signed record, making a new one when
// the credential or the addresses changed, or when it is more than a
// heartbeat old: a node that admits this one takes a record as a sign of
// life only when it is fresh (a frozen node gives no sign of life).
func (n *Node) currentRecord() (*discovery.Record, error) {
	n.live.mu.Lock()
	defer n.live.mu.Unlock()
	cred := n.credential()
	h := n.host()
	r := n.live.record
	if r != nil && (n.frozen() || n.leaving.Load() || r.Credential.Serial == cred.Serial && (h == nil || r.NumAddrs() == len(h.Addrs())) &&
		n.now().Sub(r.Timestamp) < n.cfg.HeartbeatInterval) {
		return r, nil
	}
	if n.leaving.Load() {
		// A record signed now would carry a sequence number above the
		// leave's, and every node that got it first would refuse the
		// leave as a replay.
		return nil, errLeaving
	}
	r, err := discovery.NewRecord(n.cfg.Identity, cred, n.listenAddrs(), n.nextSeq(), n.cfg.HeartbeatInterval, n.now())
	if err != nil {
		return nil, err
	}
	n.live.record = r
	return r, nil
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
		for _, f := range ls {
			f(e)
		}
	}
}

// startRegistry joins the registry and revocation topics, announces this
// node, and starts the heartbeat and liveness loops.
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
	go n.heartbeatLoop()
	go n.tickLoop()
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
	return t.Publish(ctx, b)
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

// announce publishes this node's current record.
func (n *Node) announce() error {
	rec, err := n.currentRecord()
	if err != nil {
		return err
	}
	return n.publishRegistry(&protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Announce{Announce: rec.Proto()}})
}

// announceEvery is how many heartbeats pass between full records: the
// record (with its credential) is re-signed and re-announced every
// sixtieth beat (30 minutes at the default heartbeat) as anti-entropy, when
// the credential was renewed, as soon as a new node has a neighbour on the
// registry topic after its first admission, and at the beat after an
// admission (at most every tenth beat). The beats in between
// travel on the beat overlay. An agent that missed a record learns it from
// the join-time exchange, or when a beat of an unknown agent arrives.
const announceEvery = 60

// announceMinGap is the fewest beats between two records sent because of
// admissions.
const announceMinGap = 10

func (n *Node) heartbeatLoop() {
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	poll := time.NewTicker(min(overlay.FlushEvery(n.cfg.HeartbeatInterval), 100*time.Millisecond))
	defer poll.Stop()
	announced := false // a record went out to at least one neighbour
	lastAnnounce := -announceMinGap
	missed := false // a beat fell due while frozen
	for beat := 0; ; {
		select {
		case <-n.ctx.Done():
			return
		case <-poll.C:
			if missed && !n.frozen() {
				// The pause is over: the beat that fell due during it goes
				// out now, as a paused process's ticker fires at once when
				// it resumes.
				missed = false
				break
			}
			if announced || n.frozen() || n.leaving.Load() {
				continue
			}
			n.mu.Lock()
			topic := n.topics[wire.TopicRegistry]
			n.mu.Unlock()
			if len(topic.ListPeers()) > 0 && n.announce() == nil {
				announced = true
				t.Reset(n.cfg.HeartbeatInterval)
			}
			continue
		case <-t.C:
			beat++
		}
		if n.leaving.Load() {
			continue
		}
		if n.frozen() {
			missed = true
			continue
		}
		if beat%announceEvery == 0 || (beat-lastAnnounce >= announceMinGap && n.live.announceSoon.CompareAndSwap(true, false)) {
			lastAnnounce = beat
			n.live.mu.Lock()
			n.live.record = nil // sign a fresh record: new seq and timestamp
			n.live.mu.Unlock()
			_ = n.announce()
		} else {
			beat := discovery.SignBeat(n.cfg.Identity, n.nextSeq(), n.now())
			beat.Revocations = n.revs.Sum()
			n.beats.Originate(beat)
		}
		n.renewer.MaybeRenew(n.ctx)
		n.revs.Prune(n.now())
	}
}

func (n *Node) tickLoop() {
	every := n.cfg.HeartbeatInterval / 4
	if every < 5*time.Millisecond {
		every = 5 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now() // the pause is measured on the monotonic clock, not the (skewable) Clock
	ticks := 0
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if n.frozen() {
			continue
		}
		now, mono := n.now(), time.Now()
		// A tick half a heartbeat late means this node was paused (or
		// starved): the others' silence during the pause is excused.
		// Shorter delays are scheduling noise, which the timeout's margin
		// of a heartbeat absorbs; excusing them would delay detection.
		if late := mono.Sub(last) - every; late > n.cfg.HeartbeatInterval/2 {
			n.registry.Excuse(late, now)
		}
		last = mono
		n.emit(n.registry.Tick(now))
		if ticks++; ticks%4 == 0 {
			n.admission.ForgetStrangers()
		}
	}
}
