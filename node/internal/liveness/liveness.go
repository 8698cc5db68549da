// Package liveness is this agent's own side of the registry: its signed
// record and sequence numbers, the heartbeat loop that signs a beat (or,
// now and then, a full record) every interval, and the tick loop that
// ages every other agent's liveness.
package liveness

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/node/internal/overlay"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// Deps is what the loops need of the node.
type Deps struct {
	Identity *trust.Identity
	// Credential returns the agent's current credential.
	Credential func() *trust.Credential
	// Addrs returns the listen addresses (nil before start).
	Addrs             func() []ma.Multiaddr
	Registry          *discovery.Registry
	Clock             func() time.Time
	HeartbeatInterval time.Duration
	// Publish sends a message on the registry topic; TopicPeers says how
	// many peers are on it.
	Publish    func(m *protocolpb.RegistryMessage) error
	TopicPeers func() int
	// Originate sends this agent's beat on the overlay; RevDigest is the
	// digest of the revocations held, which every beat carries.
	Originate func(beat *protocolpb.Beat)
	RevDigest func() uint64
	// EveryBeat runs after each beat (renewal, pruning); EveryFourTicks
	// every fourth tick (forgetting strangers).
	EveryBeat, EveryFourTicks func()
	// Emit handles registry events.
	Emit func([]discovery.Event)
	// Frozen, when set, pauses both loops (simulations).
	Frozen func() bool
	// Advertised returns the actions the agent advertises (sorted) and
	// the digest of its advertisement; nil when unset.
	Advertised func() ([]string, [32]byte)
}

// Records sent because the advertisement changed: ChangeBurst at once,
// then one every ChangeEvery heartbeats. Each is a new record that every
// node rate-limits (records.RecordBurst at once, then one a heartbeat), so
// changes use at most half of that steady rate and leave the rest to the
// records of renewals, admissions and anti-entropy. Changes in between are
// folded into the next record.
const (
	ChangeBurst = 2
	ChangeEvery = 2
)

// Self is this agent's liveness. Its methods are safe for concurrent use.
//
// Lock order: mu alone; Deps are called without it but Credential, Addrs
// and Clock.
type Self struct {
	d      Deps
	seq    atomic.Uint64
	mu     sync.Mutex
	record *discovery.Record
	// sent is the advertisement digest of the last record published.
	sent     [32]byte
	leaving  atomic.Bool // a leave was signed: no record or beat after it
	settling atomic.Bool // an advertisement change waits for changeSettle
	// changed says the advertisement changed since the last record sent;
	// changes bounds the records sent for that.
	changed atomic.Bool
	changes *limit.Keyed
}

// New returns this agent's liveness; nothing runs until Run.
func New(d Deps) *Self {
	if d.Frozen == nil {
		d.Frozen = func() bool { return false }
	}
	if d.Advertised == nil {
		d.Advertised = func() ([]string, [32]byte) { return nil, [32]byte{} }
	}
	s := &Self{d: d, changes: limit.New(ChangeEvery*d.HeartbeatInterval, ChangeBurst)}
	s.seq.Store(uint64(time.Now().UnixNano())) // above any seq of an earlier run
	return s
}

// Run starts the heartbeat and tick loops; they end with ctx.
func (s *Self) Run(ctx context.Context) {
	go s.heartbeatLoop(ctx)
	go s.tickLoop(ctx)
}

// Leave signs this agent's leave; no record or beat follows it.
func (s *Self) Leave() *protocolpb.Leave {
	s.leaving.Store(true)
	return discovery.SignLeave(s.d.Identity, s.NextSeq(), s.d.Clock())
}

// Stop stops the loops from signing anything more (a crash: no leave).
func (s *Self) Stop() { s.leaving.Store(true) }

// NextSeq returns the next sequence number of this agent's signed items.
func (s *Self) NextSeq() uint64 { return s.seq.Add(1) }

// ErrLeaving is the error of a record asked for after the leave.
var ErrLeaving = errors.New("node: leaving: no new record after the leave")

// Record returns this node's signed record, making a new one when
// the credential or the addresses changed, or when it is more than a
// heartbeat old: a node that admits this one takes a record as a sign of
// life only when it is fresh (a frozen node gives no sign of life).
func (s *Self) Record() (*discovery.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cred := s.d.Credential()
	addrs := s.d.Addrs()
	names, digest := s.d.Advertised()
	r := s.record
	var had [32]byte
	if r != nil {
		had, _ = r.AdvertDigest()
	}
	if r != nil && (s.d.Frozen() || s.leaving.Load() || r.Credential.Serial == cred.Serial && r.NumAddrs() == len(addrs) &&
		had == digest && s.d.Clock().Sub(r.Timestamp) < s.d.HeartbeatInterval) {
		return r, nil
	}
	if s.leaving.Load() {
		// A record signed now would carry a sequence number above the
		// leave's, and every node that got it first would refuse the
		// leave as a replay.
		return nil, ErrLeaving
	}
	r, err := discovery.NewRecordAdvertising(s.d.Identity, cred, addrs, s.NextSeq(), s.d.HeartbeatInterval, s.d.Clock(), names, digest)
	if err != nil {
		return nil, err
	}
	s.record = r
	return r, nil
}

// changeSettle is how long a change waits for the next before a record
// goes out: a handler process that stops unregisters its actions one by
// one, and they make one record, not a burst that spends the bound on
// the first few while the rest wait two heartbeats.
const changeSettle = 100 * time.Millisecond

// AdvertChanged says the advertisement changed: a new record goes out
// once changes settle (changeSettle) if the change bound allows, else at a
// later beat that it allows.
func (s *Self) AdvertChanged() {
	s.changed.Store(true)
	if s.settling.CompareAndSwap(false, true) {
		time.AfterFunc(changeSettle, func() {
			s.settling.Store(false)
			s.announceChange()
		})
	}
}

// announceChange sends a new record if the advertisement changed and the
// bound allows; it reports whether it did.
func (s *Self) announceChange() bool {
	if !s.changed.Load() || s.leaving.Load() || s.d.Frozen() || s.d.TopicPeers() == 0 && s.d.Registry.Len() == 0 {
		return false
	}
	// A record published since the change (the first one, after the
	// actions were set before start) may carry it already. Cleared
	// before the digest is read: a change after this is announced later.
	s.changed.Store(false)
	_, digest := s.d.Advertised()
	s.mu.Lock()
	sent := s.sent == digest
	s.mu.Unlock()
	if sent {
		return false
	}
	if !s.changes.Allow("") {
		s.changed.Store(true)
		return false
	}
	s.mu.Lock()
	s.record = nil // sign a fresh record: new seq, the new digest
	s.mu.Unlock()
	_ = s.Announce()
	return true
}

// Announce publishes this node's current record.
func (s *Self) Announce() error {
	rec, err := s.Record()
	if err != nil {
		return err
	}
	if err := s.d.Publish(&protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Announce{Announce: rec.Proto()}}); err != nil {
		return err
	}
	digest, _ := rec.AdvertDigest()
	s.mu.Lock()
	s.sent = digest
	s.mu.Unlock()
	return nil
}

// announceEvery is how many heartbeats pass between full records: the
// record (with its credential) is re-signed and re-announced every
// sixtieth beat (30 minutes at the default heartbeat) as anti-entropy, when
// the credential was renewed or the advertisement changed, and as soon as
// a new node has a neighbour on the registry topic after its first
// admission. The beats in between travel on the beat overlay. An agent
// that missed a record learns it from the join-time exchange, or when a
// beat of an unknown agent arrives: it asks the relay for the record. An
// admission no longer re-announces: at a cold start of N agents that was a
// second flood of N records, each kept in every node's gossip cache.
const announceEvery = 60

func (s *Self) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(s.d.HeartbeatInterval)
	defer t.Stop()
	poll := time.NewTicker(min(overlay.FlushEvery(s.d.HeartbeatInterval), 100*time.Millisecond))
	defer poll.Stop()
	announced := false // a record went out to at least one neighbour
	missed := false    // a beat fell due while frozen
	for beat := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			if missed && !s.d.Frozen() {
				// The pause is over: the beat that fell due during it goes
				// out now, as a paused process's ticker fires at once when
				// it resumes.
				missed = false
				break
			}
			if announced || s.d.Frozen() || s.leaving.Load() {
				continue
			}
			if s.d.TopicPeers() > 0 && s.Announce() == nil {
				announced = true
				t.Reset(s.d.HeartbeatInterval)
			}
			continue
		case <-t.C:
			beat++
		}
		if s.leaving.Load() {
			continue
		}
		if s.d.Frozen() {
			missed = true
			continue
		}
		switch {
		case s.announceChange(): // the changed record went out instead of a beat
		case beat%announceEvery == 0:
			s.mu.Lock()
			s.record = nil // sign a fresh record: new seq and timestamp
			s.mu.Unlock()
			_ = s.Announce()
		default:
			beat := discovery.SignBeat(s.d.Identity, s.NextSeq(), s.d.Clock())
			beat.Revocations = s.d.RevDigest()
			s.d.Originate(beat)
		}
		s.d.EveryBeat()
	}
}

func (s *Self) tickLoop(ctx context.Context) {
	every := s.d.HeartbeatInterval / 4
	if every < 5*time.Millisecond {
		every = 5 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now() // the pause is measured on the monotonic clock, not the (skewable) Clock
	ticks := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.d.Frozen() {
			continue
		}
		now, mono := s.d.Clock(), time.Now()
		// A tick half a heartbeat late means this node was paused (or
		// starved): the others' silence during the pause is excused.
		// Shorter delays are scheduling noise, which the timeout's margin
		// of a heartbeat absorbs; excusing them would delay detection.
		if late := mono.Sub(last) - every; late > s.d.HeartbeatInterval/2 {
			s.d.Registry.Excuse(late, now)
		}
		last = mono
		s.d.Emit(s.d.Registry.Tick(now))
		if ticks++; ticks%4 == 0 {
			s.d.EveryFourTicks()
		}
	}
}
