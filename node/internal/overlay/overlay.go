// Package overlay is the beat overlay: the long-lived links over which
// agents' signed heartbeats (and new records, leaves and revocations)
// travel between neighbours, each item verified once by each node and
// relayed at most once per link. It knows the mesh through Deps only.
package overlay

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// wire.ProtocolBeat carries heartbeats between beat neighbours. Each agent signs
// its own heartbeat (discovery.SignBeat); every node verifies each new one
// once, applies it to its registry, and relays it to its other neighbours,
// batched with the others it learned in the same short interval. A beat
// link is one long-lived stream; either end writes batches on it.
//
// This replaces a pubsub message per heartbeat: a beat costs about 115 bytes
// on each link it crosses instead of about 190 (pubsub's author, sequence
// number, topic and signature envelope around a 16-byte body), there is no
// gossip of message IDs, and a node relays each beat at most once per link,
// never back to the neighbour it came from.

const (
	maxBeatLinks   = 64        // links in all, inbound ones included
	maxBeatBatch   = 128 << 10 // bytes in one batch
	beatsPerBatch  = 256       // 256 × 120 B, plus
	revsPerBatch   = 32        // 32 × trust.MaxRevocationSize, plus
	recsPerBatch   = 16        // 16 × discovery.MaxRecordSize, plus
	leavesPerBatch = 32        // 32 × 150 B: under maxBeatBatch
	// More revocations than fit are left out: the revocation digest and
	// the join-time exchange repair what the overlay drops. Records go in
	// as many batches as they need, up to maxQueuedRecs a link between
	// two flushes (those of every agent a sync just taught, at a cold
	// start or a heal): each crosses each link about once, so that every
	// node learns a new agent within the overlay's diameter of flushes.
	maxQueuedRecs = 1024
	// A batch asks for at most maxWant records (want); a node answers at
	// most maxWantAnswers of a link's asks a heartbeat: a 32-byte ask
	// costs it a record of up to 4 KiB, 2 MiB a heartbeat at most.
	maxWant        = 256
	maxWantAnswers = 512

	// maxHeld bounds the beats of unlisted agents kept, unchecked, until
	// the ask (or sync) they set off brings the agent's record (then
	// checked, applied and relayed) or a heartbeat passes.
	maxHeld = 512
)

// heldBeat is a beat of an agent this node did not list when it arrived,
// and the neighbour that relayed it (charged if it does not verify).
type heldBeat struct {
	from peer.ID
	beat *protocolpb.Beat
	at   time.Time
}

// beatLink is one neighbour on the beat overlay.
type beatLink struct {
	key      trust.PublicKey
	s        network.Stream // the stream this node writes on
	w        msgio.WriteCloser
	outbound bool
	pending  map[trust.PublicKey]*protocolpb.Beat // newest beat per agent, not yet sent
	revs     [][]byte                             // revocations not yet sent
	recs     []*protocolpb.Announcement           // new agents' records not yet sent
	leaves   []*protocolpb.Leave                  // leaves not yet sent
	// leavesAgain go in the batch after the one that carries them first:
	// a leave is sent once, by its agent, and a node that misses every
	// copy waits for the timeout. A second copy costs the receiver a
	// lookup (the seq), not a signature check.
	leavesAgain []*protocolpb.Leave
	want        [][]byte // agents to ask this neighbour's records for
	// answered counts the asks of this neighbour answered since answeredAt
	// (at most maxWantAnswers a heartbeat).
	answered   int
	answeredAt time.Time
}

// Deps is what the overlay needs of the node. Every function must be safe
// for concurrent use; none may block for long.
type Deps struct {
	Self     trust.PublicKey
	Registry *discovery.Registry
	Clock    func() time.Time
	// HeartbeatInterval, DeadAfter and AdmissionTimeout are the node's.
	HeartbeatInterval, DeadAfter, AdmissionTimeout time.Duration
	// Degree is how many links this node opens (Config.BeatDegree).
	Degree int
	// Admitted reports whether p passed admission (the registry lists it).
	Admitted func(p peer.ID) bool
	// Connect connects to p and completes admission.
	Connect func(ctx context.Context, ai peer.AddrInfo) error
	// ApplyRevocation, ApplyRecord and ApplyLeave apply a relayed item
	// (ApplyRecord and ApplyLeave relay it on when it was news).
	ApplyRevocation func(raw []byte) error
	ApplyRecord     func(a *protocolpb.Announcement) error
	ApplyLeave      func(l *protocolpb.Leave) error
	// Blame audits and charges p for a relayed item refused with code
	// when p should have refused it itself; it reports whether p was cut
	// off.
	Blame func(p peer.ID, kind audit.Kind, code trust.Code) bool
	// Emit handles registry events (audit, close the dead, listeners).
	Emit func([]discovery.Event)
	// SyncSoon asks p for the records it holds; PullSoon for its
	// revocations (both at most once a heartbeat per peer).
	SyncSoon, PullSoon func(p peer.ID)
	// RevDigest is the digest of the revocations this node holds.
	RevDigest func() uint64
	// Frozen, when set, pauses the overlay (simulations); Lost drops an
	// item received from p (simulations). nil in production.
	Frozen func() bool
	Lost   func(p peer.ID) bool
}

// Overlay is the node's part of the beat overlay: it opens BeatDegree links
// to connected agents chosen at random (others open links to it), so the
// overlay is a random graph of out-degree BeatDegree over the connections,
// which stays connected with high probability however dense the
// connections are. A node with fewer connected agents dials more from its
// registry, so a newcomer that knows one member links to several.
//
// Lock order: mu alone; no Deps function is called while it is held, but
// Registry's and Admitted's (which take only the registry's own lock).
type Overlay struct {
	d            Deps
	h            host.Host
	ctx          context.Context
	mu           sync.Mutex
	links        map[peer.ID]*beatLink
	dialing      map[peer.ID]bool
	wake         chan struct{}
	lastMaintain time.Time
	lastRejoin   time.Time                    // when this node last dialed agents it holds dead
	soon         bool                         // linkSoon asked for soonLinks links before the next look
	held         map[trust.PublicKey]heldBeat // beats of unlisted agents (at most maxHeld)
	bytesIn      atomic.Int64                 // batches received, with their framing
}

// New returns an overlay; nothing runs until Start.
func New(d Deps) *Overlay {
	if d.Frozen == nil {
		d.Frozen = func() bool { return false }
	}
	if d.Lost == nil {
		d.Lost = func(peer.ID) bool { return false }
	}
	return &Overlay{d: d, links: map[peer.ID]*beatLink{}, dialing: map[peer.ID]bool{}, wake: make(chan struct{}, 1)}
}

// FlushEvery is how long a node gathers beats before relaying them: a
// thirtieth of the heartbeat (1 s at the default 30 s), so that a beat
// crosses a mesh of diameter 10 in a third of a heartbeat.
func FlushEvery(hb time.Duration) time.Duration {
	return min(max(hb/30, 2*time.Millisecond), time.Second)
}

// Start runs the overlay on h until ctx ends. The caller registers
// HandleStream for wire.ProtocolBeat, behind the gate.
func (b *Overlay) Start(ctx context.Context, h host.Host) {
	b.ctx, b.h = ctx, h
	go b.loop()
}

// queue adds to every link's queue with add, then wakes the flush loop.
func (b *Overlay) queue(add func(l *beatLink)) {
	b.mu.Lock()
	for _, l := range b.links {
		add(l)
	}
	b.mu.Unlock()
	b.wakeUp()
}

// wakeUp wakes the flush loop.
func (b *Overlay) wakeUp() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Originate sends this node's own new beat to every neighbour at once.
func (b *Overlay) Originate(beat *protocolpb.Beat) {
	b.queue(func(l *beatLink) { l.pending[b.d.Self] = beat })
}

// PushRevocation sends a newly applied revocation to every neighbour.
func (b *Overlay) PushRevocation(raw []byte) {
	b.queue(func(l *beatLink) {
		if len(l.revs) < revsPerBatch {
			l.revs = append(l.revs, raw)
		}
	})
}

// PushRecords sends the records of agents that just joined to every
// neighbour, then applies the beats of theirs that arrived before them.
func (b *Overlay) PushRecords(evs []discovery.Event) {
	var recs []*protocolpb.Announcement
	var beats []heldBeat
	for _, e := range evs {
		if e.Reason != "joined" {
			continue
		}
		if r := b.d.Registry.Record(e.Agent); r != nil {
			recs = append(recs, r.Proto())
		}
		if h, ok := b.unhold(e.Agent); ok {
			beats = append(beats, h)
		}
	}
	if len(recs) > 0 {
		b.queue(func(l *beatLink) { l.recs = append(l.recs, recs[:min(len(recs), maxQueuedRecs-len(l.recs))]...) })
	}
	for _, h := range beats {
		b.d.Blame(h.from, audit.Beat, b.receive(h.from, h.beat))
	}
}

// hold keeps the beat of an agent this node does not list, until the
// agent's record arrives: without it, a node that learns an agent from a
// sync would hear of it alive only at its next beat, and would not relay
// this one, so that at a cold start each heartbeat taught the agent one
// overlay hop further. Its signature is not checked here: it is when the
// record arrives (receive). One beat per agent, the newest; at most
// maxHeld, those older than a heartbeat dropped first.
func (b *Overlay) hold(from peer.ID, agent trust.PublicKey, beat *protocolpb.Beat) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if h, ok := b.held[agent]; ok {
		if h.beat.Seq < beat.Seq {
			b.held[agent] = heldBeat{from, beat, now}
		}
		return
	}
	if len(b.held) >= maxHeld {
		if b.pruneHeldLocked(now); len(b.held) >= maxHeld {
			return
		}
	}
	if b.held == nil {
		b.held = map[trust.PublicKey]heldBeat{}
	}
	b.held[agent] = heldBeat{from, beat, now}
}

// pruneHeldLocked drops the held beats older than a heartbeat. Under mu.
func (b *Overlay) pruneHeldLocked(now time.Time) {
	for k, h := range b.held {
		if now.Sub(h.at) >= b.d.HeartbeatInterval {
			delete(b.held, k)
		}
	}
}

// ask queues a request for agent's record to the neighbour p, which
// relayed one of its beats (so lists it), for the next flush.
func (b *Overlay) ask(p peer.ID, agent trust.PublicKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.links[p]
	if l == nil || len(l.want) >= maxWant {
		return
	}
	for _, k := range l.want {
		if agent.Equal(trust.PublicKey(k)) {
			return
		}
	}
	l.want = append(l.want, agent[:])
}

// answer queues the records p asked for that this node holds, within
// p's budget of maxWantAnswers a heartbeat; asks for agents it does not
// list are ignored (p may have heard of an agent this node forgot).
func (b *Overlay) answer(p peer.ID, want [][]byte) {
	var recs []*protocolpb.Announcement
	for _, k := range want {
		if r := b.d.Registry.Record(trust.PublicKey(k)); r != nil {
			recs = append(recs, r.Proto())
		}
	}
	if len(recs) == 0 {
		return
	}
	now := time.Now()
	b.mu.Lock()
	if l := b.links[p]; l != nil {
		if now.Sub(l.answeredAt) >= b.d.HeartbeatInterval {
			l.answered, l.answeredAt = 0, now
		}
		n := min(len(recs), maxWantAnswers-l.answered, maxQueuedRecs-len(l.recs))
		if n > 0 {
			l.recs = append(l.recs, recs[:n]...)
			l.answered += n
		}
	}
	b.mu.Unlock()
	b.wakeUp()
}

// unhold takes the beat held for agent, if any and not older than a
// heartbeat.
func (b *Overlay) unhold(agent trust.PublicKey) (heldBeat, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.held[agent]
	if !ok {
		return h, false
	}
	delete(b.held, agent)
	if len(b.held) == 0 {
		b.held = nil // a map that once held hundreds keeps its size
	}
	return h, time.Since(h.at) < b.d.HeartbeatInterval
}

// PushLeave sends a newly applied leave to every neighbour, in two
// consecutive batches.
func (b *Overlay) PushLeave(leave *protocolpb.Leave) {
	b.queue(func(l *beatLink) {
		if len(l.leaves) < leavesPerBatch {
			l.leaves = append(l.leaves, leave)
		}
		if len(l.leavesAgain) < leavesPerBatch {
			l.leavesAgain = append(l.leavesAgain, leave)
		}
	})
}

func (b *Overlay) loop() {
	t := time.NewTicker(FlushEvery(b.d.HeartbeatInterval))
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		case <-b.wake:
		}
		if b.d.Frozen() {
			continue
		}
		b.maintain()
		b.flush()
	}
}

// maintain opens links to random connected, listed agents until this
// node has BeatDegree outbound links; it looks at most four times a
// heartbeat.
func (b *Overlay) maintain() {
	now := time.Now()
	b.mu.Lock()
	degree := b.d.Degree
	switch {
	case b.soon:
		b.soon = false
		degree = min(degree, soonLinks)
	case now.Sub(b.lastMaintain) < b.d.HeartbeatInterval/4:
		b.mu.Unlock()
		return
	default:
		b.lastMaintain = now
		b.pruneHeldLocked(now) // beats whose record never came
	}
	out := len(b.dialing)
	for _, l := range b.links {
		if l.outbound {
			out++
		}
	}
	need := degree - out
	var cands []peer.ID
	if need > 0 && len(b.links) < maxBeatLinks {
		for _, p := range b.h.Network().Peers() {
			if b.links[p] != nil || b.dialing[p] {
				continue
			}
			if !b.d.Admitted(p) {
				continue
			}
			cands = append(cands, p)
		}
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	if len(cands) > need {
		cands = cands[:max(need, 0)]
	}
	// Fewer than BeatDegree links in all, even with the connected agents
	// (a newcomer that knows one member): dial alive agents from the
	// registry, at the addresses in their records.
	var far []peer.ID
	if short := degree - len(b.links) - len(b.dialing) - len(cands); short > 0 {
		for _, e := range b.d.Registry.Entries() {
			if e.State == discovery.Alive && b.links[e.PeerID] == nil && !b.dialing[e.PeerID] &&
				!slices.Contains(cands, e.PeerID) && b.h.Network().Connectedness(e.PeerID) != network.Connected {
				far = append(far, e.PeerID)
			}
		}
		rand.Shuffle(len(far), func(i, j int) { far[i], far[j] = far[j], far[i] })
		far = far[:min(len(far), short)]
	}
	// Agents this node holds dead may be back: a partition between groups
	// that no bootstrap peer joins (agents found by mDNS, which does not
	// look again) heals, and each side holds the other dead; nothing
	// else dials across. So it dials one of them, at random, once every
	// DeadAfter; once a heartbeat, and up to BeatDegree, when it is cut
	// off from every agent it knew (no link, no connected agent, none
	// alive to dial). The first that admits it brings it back (its record
	// is a fresh sign of life); the others come with that neighbour's
	// beats. A crashed agent costs a failed dial now and then, until its
	// credential expires.
	var dead []peer.ID
	isolated := len(far) == 0 && len(cands) == 0 && len(b.links) == 0 && len(b.dialing) == 0
	every, most := b.d.DeadAfter, 1
	if isolated {
		every, most = b.d.HeartbeatInterval, degree
	}
	if now.Sub(b.lastRejoin) >= every {
		b.lastRejoin = now
		t := b.d.Clock()
		for _, e := range b.d.Registry.Entries() {
			if e.State == discovery.Dead && t.Before(e.Expires) && b.links[e.PeerID] == nil && !b.dialing[e.PeerID] &&
				b.h.Network().Connectedness(e.PeerID) != network.Connected {
				dead = append(dead, e.PeerID)
			}
		}
		rand.Shuffle(len(dead), func(i, j int) { dead[i], dead[j] = dead[j], dead[i] })
		dead = dead[:min(len(dead), most)]
	}
	for _, p := range slices.Concat(cands, far, dead) {
		b.dialing[p] = true
	}
	b.mu.Unlock()
	for _, p := range cands {
		go b.open(p, false, false)
	}
	for _, p := range far {
		go b.open(p, true, false)
	}
	for _, p := range dead {
		go b.open(p, true, true)
	}
}

// soonLinks is how many links a node with fewer looks for at once, when a
// sync taught it agents (LinkSoon); the rest wait for the regular look.
const soonLinks = 2

// LinkSoon makes the flush loop look for a second link at once when this
// node has only one: a newcomer that just learned the registry from its
// first contact has two paths within a flush, not a quarter heartbeat
// later (7.5 s at the default), during which its one link would be the
// only path of every beat, record and leave the mesh sends it. The rest
// wait for the regular look, so that nodes wiring up at a cold start do
// not dial far agents their wiring would have given them anyway (each
// link more costs every node's relay traffic).
func (b *Overlay) LinkSoon() {
	b.mu.Lock()
	short := len(b.links)+len(b.dialing) < min(b.d.Degree, soonLinks)
	if short {
		b.soon = true
	}
	b.mu.Unlock()
	if short {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// open opens a beat link to p; when p is far (not a neighbour yet) it
// first connects to it at the addresses of its record, past the swarm's
// dial backoff if force (which after a partition grows to minutes).
func (b *Overlay) open(p peer.ID, far, force bool) {
	defer func() {
		b.mu.Lock()
		delete(b.dialing, p)
		b.mu.Unlock()
	}()
	if far && !b.connect(p, force) {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.d.AdmissionTimeout)
	defer cancel()
	s, err := b.h.NewStream(ctx, p, wire.ProtocolBeat)
	if err != nil {
		return
	}
	if !b.add(p, s, true) {
		s.Reset()
		return
	}
	go b.read(p, s)
}

// connect connects to (and is admitted by) p at the addresses of its
// record.
func (b *Overlay) connect(p peer.ID, force bool) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	rec := b.d.Registry.Record(k)
	if rec == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.d.AdmissionTimeout)
	defer cancel()
	if force {
		ctx = network.WithForceDirectDial(ctx, "rejoin")
	}
	return b.d.Connect(ctx, peer.AddrInfo{ID: p, Addrs: rec.Addrs()}) == nil
}

// HandleStream accepts a link from a listed agent. A dead agent may link:
// its own signed beat is what brings it back.
func (b *Overlay) HandleStream(s network.Stream) {
	p := s.Conn().RemotePeer()
	if !b.d.Admitted(p) || !b.add(p, s, false) {
		s.Reset()
		return
	}
	b.read(p, s)
}

// add makes s the link to p unless there is one already, in which case s
// is only read from. It refuses when the node has too many links.
func (b *Overlay) add(p peer.ID, s network.Stream, outbound bool) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.links[p] != nil {
		return true
	}
	if len(b.links) >= maxBeatLinks {
		return false
	}
	b.links[p] = &beatLink{key: k, s: s, w: msgio.NewVarintWriter(s), outbound: outbound, pending: map[trust.PublicKey]*protocolpb.Beat{}}
	return true
}

// drop forgets the link written on s and resets s.
func (b *Overlay) drop(p peer.ID, s network.Stream) {
	b.mu.Lock()
	if l := b.links[p]; l != nil && l.s == s {
		delete(b.links, p)
	}
	b.mu.Unlock()
	s.Reset()
}

// read applies the batches p sends on s until the stream ends. A batch that
// does not decode, or a beat with a bad signature, is hostile: an honest
// neighbour relays only beats it verified.
func (b *Overlay) read(p peer.ID, s network.Stream) {
	r := msgio.NewVarintReaderSize(s, maxBeatBatch)
	for {
		raw, err := r.ReadMsg()
		if err != nil {
			b.drop(p, s)
			return
		}
		b.bytesIn.Add(int64(len(raw) + len(binary.AppendUvarint(nil, uint64(len(raw))))))
		var batch protocolpb.BeatBatch
		err = proto.Unmarshal(raw, &batch)
		r.ReleaseMsg(raw)
		if err != nil {
			b.d.Blame(p, audit.Beat, trust.CodeMalformed)
			b.drop(p, s)
			return
		}
		if !b.d.Frozen() && b.apply(p, &batch) {
			b.drop(p, s)
			return
		}
	}
}

// apply applies what a batch from p carries, each item unless the injected
// loss drops it. It reports whether p was cut off for hostile items.
func (b *Overlay) apply(p peer.ID, batch *protocolpb.BeatBatch) (cut bool) {
	lost := func() bool { return b.d.Lost(p) }
	for i, k := range batch.Want { // a malformed ask ends the link, as a malformed batch does
		if i == maxWant || len(k) != trust.PublicKeySize {
			b.d.Blame(p, audit.Beat, trust.CodeMalformed)
			return true
		}
	}
	if len(batch.Want) > 0 && !lost() {
		b.answer(p, batch.Want)
	}
	for _, raw := range batch.Revocations {
		if !lost() && b.d.Blame(p, audit.Revocation, trust.CodeOf(b.d.ApplyRevocation(raw))) {
			return true
		}
	}
	for _, a := range batch.Records {
		if !lost() && b.d.Blame(p, audit.Announcement, b.applyRecord(a)) {
			return true
		}
	}
	for _, l := range batch.Leaves {
		if !lost() && b.d.Blame(p, audit.Leave, b.applyLeave(l)) {
			return true
		}
	}
	for _, beat := range batch.Beats {
		if !lost() && b.d.Blame(p, audit.Beat, b.receive(p, beat)) {
			return true
		}
	}
	return false
}

// applyRecord applies a record relayed on the overlay (which relays it on
// when it named a new agent).
func (b *Overlay) applyRecord(a *protocolpb.Announcement) trust.Code {
	return trust.CodeOf(b.d.ApplyRecord(a))
}

// applyLeave applies a leave relayed on the overlay and relays it on when
// it was news.
func (b *Overlay) applyLeave(l *protocolpb.Leave) trust.Code {
	return trust.CodeOf(b.d.ApplyLeave(l))
}

// receive applies one beat relayed by from and queues it for the other
// neighbours when it is news. It returns the code of a hostile beat.
func (b *Overlay) receive(from peer.ID, beat *protocolpb.Beat) trust.Code {
	if len(beat.Agent) != trust.PublicKeySize {
		return trust.CodeMalformed
	}
	agent := trust.PublicKey(beat.Agent)
	if agent.Equal(b.d.Self) || beat.Seq <= b.d.Registry.Seq(agent) {
		b.seen(from, agent, beat.Seq)
		return ""
	}
	if b.d.Registry.State(agent) == 0 {
		// Not listed here: learn the agent from whoever relayed it; the
		// beat waits for the record, unchecked (hold).
		b.hold(from, agent, beat)
		b.ask(from, agent)
		b.d.SyncSoon(from) // a relay that does not answer asks (an older node)
		return ""
	}
	if d := b.d.Clock().Sub(time.UnixMilli(beat.Timestamp)); d > b.d.DeadAfter || -d > b.d.DeadAfter {
		return "" // stale: it would be refused after the signature check
	}
	_, ts, err := discovery.VerifyBeat(beat)
	if err != nil {
		return trust.CodeOf(err)
	}
	if beat.Revocations != b.d.RevDigest() && agent.Equal(b.linkKey(from)) {
		b.d.PullSoon(from) // a neighbour holds other revocations
	}
	evs, err := b.d.Registry.Heartbeat(agent, beat.Seq, ts, b.d.Clock())
	b.d.Emit(evs)
	switch trust.CodeOf(err) {
	case "":
		b.relay(from, agent, beat)
	case protocol.CodeUnlisted:
		b.d.SyncSoon(from) // learn the agent from whoever relayed it
	case protocol.CodeReplay: // another neighbour was faster
		b.seen(from, agent, beat.Seq)
	}
	return ""
}

// linkKey returns the key of the neighbour p (zero when not linked).
func (b *Overlay) linkKey(p peer.ID) trust.PublicKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.links[p]; l != nil {
		return l.key
	}
	return trust.PublicKey{}
}

// seen notes that from has agent's beat seq, so it is not sent back.
func (b *Overlay) seen(from peer.ID, agent trust.PublicKey, seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.links[from]; l != nil {
		if q := l.pending[agent]; q != nil && q.Seq <= seq {
			delete(l.pending, agent)
		}
	}
}

// relay queues a new beat for every neighbour but the one it came from and
// the agent itself.
func (b *Overlay) relay(from peer.ID, agent trust.PublicKey, beat *protocolpb.Beat) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for p, l := range b.links {
		if p == from || l.key.Equal(agent) {
			if q := l.pending[agent]; q != nil && q.Seq <= beat.Seq {
				delete(l.pending, agent)
			}
			continue
		}
		if q := l.pending[agent]; q == nil || q.Seq < beat.Seq {
			l.pending[agent] = beat
		}
	}
}

// flush writes each neighbour's pending beats as one batch (or a few).
func (b *Overlay) flush() {
	type write struct {
		p     peer.ID
		l     *beatLink
		batch *protocolpb.BeatBatch
	}
	var writes []write
	b.mu.Lock()
	for p, l := range b.links {
		for _, batch := range l.take() {
			writes = append(writes, write{p, l, batch})
		}
	}
	b.mu.Unlock()
	deadline := time.Now().Add(b.d.AdmissionTimeout)
	for _, w := range writes {
		raw, err := proto.Marshal(w.batch)
		if err != nil {
			continue
		}
		_ = w.l.s.SetWriteDeadline(deadline)
		if w.l.w.WriteMsg(raw) != nil {
			b.drop(w.p, w.l.s)
		}
	}
}

// take returns what is queued for the link as batches, and empties the
// queues; leaves sent now are queued to go once more. Under Overlay.mu.
func (l *beatLink) take() []*protocolpb.BeatBatch {
	if len(l.pending) == 0 && len(l.revs) == 0 && len(l.recs) == 0 && len(l.leaves) == 0 && len(l.want) == 0 {
		return nil
	}
	var out []*protocolpb.BeatBatch
	recs := l.recs
	batch := &protocolpb.BeatBatch{Beats: make([]*protocolpb.Beat, 0, min(len(l.pending), beatsPerBatch)),
		Revocations: l.revs, Leaves: l.leaves, Want: l.want}
	l.revs, l.recs, l.leaves, l.want = nil, nil, l.leavesAgain, nil
	l.leavesAgain = nil
	for _, beat := range l.pending {
		if len(batch.Beats) == beatsPerBatch {
			batch.Records, recs = recs[:min(len(recs), recsPerBatch)], recs[min(len(recs), recsPerBatch):]
			out = append(out, batch)
			batch = &protocolpb.BeatBatch{}
		}
		batch.Beats = append(batch.Beats, beat)
	}
	for len(recs) > recsPerBatch {
		batch.Records, recs = recs[:recsPerBatch], recs[recsPerBatch:]
		out = append(out, batch)
		batch = &protocolpb.BeatBatch{}
	}
	batch.Records = recs
	// A fresh map: one that once held every agent (after a partition, or
	// at start) would keep its size for good.
	l.pending = map[trust.PublicKey]*protocolpb.Beat{}
	return append(out, batch)
}

// Links returns how many beat neighbours this node has.
func (b *Overlay) Links() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.links)
}

// BytesIn returns the bytes of heartbeat batches (with the records, leaves
// and revocations they carry) received.
func (b *Overlay) BytesIn() int64 { return b.bytesIn.Load() }
