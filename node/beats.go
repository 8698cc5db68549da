package node

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	// More revocations or records than fit are left out: the revocation
	// digest and the join-time exchange repair what the overlay drops.
)

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
}

// beats is the node's part of the beat overlay: it opens BeatDegree links
// to connected agents chosen at random (others open links to it), so the
// overlay is a random graph of out-degree BeatDegree over the connections,
// which stays connected with high probability however dense the
// connections are. A node with fewer connected agents dials more from its
// registry, so a newcomer that knows one member links to several.
type beats struct {
	n            *Node
	mu           sync.Mutex
	links        map[peer.ID]*beatLink
	dialing      map[peer.ID]bool
	wake         chan struct{}
	lastMaintain time.Time
	soon         bool // linkSoon asked for soonLinks links before the next look
	bytesIn      atomic.Int64
}

func newBeats(n *Node) *beats {
	return &beats{n: n, links: map[peer.ID]*beatLink{}, dialing: map[peer.ID]bool{}, wake: make(chan struct{}, 1)}
}

// flushEvery is how long a node gathers beats before relaying them: a
// thirtieth of the heartbeat (1 s at the default 30 s), so that a beat
// crosses a mesh of diameter 10 in a third of a heartbeat.
func flushEvery(hb time.Duration) time.Duration {
	return min(max(hb/30, 2*time.Millisecond), time.Second)
}

func (b *beats) start() {
	b.n.h.SetStreamHandler(wire.ProtocolBeat, b.n.gateWrap(b.handleStream))
	go b.loop()
}

// queue adds to every link's queue with add, then wakes the flush loop.
func (b *beats) queue(add func(l *beatLink)) {
	b.mu.Lock()
	for _, l := range b.links {
		add(l)
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// originate sends this node's own new beat to every neighbour at once.
func (b *beats) originate(beat *protocolpb.Beat) {
	b.queue(func(l *beatLink) { l.pending[b.n.self] = beat })
}

// pushRevocation sends a newly applied revocation to every neighbour.
func (b *beats) pushRevocation(raw []byte) {
	b.queue(func(l *beatLink) {
		if len(l.revs) < revsPerBatch {
			l.revs = append(l.revs, raw)
		}
	})
}

// pushRecords sends the records of agents that just joined to every
// neighbour.
func (b *beats) pushRecords(evs []discovery.Event) {
	var recs []*protocolpb.Announcement
	for _, e := range evs {
		if e.Reason == "joined" {
			if r := b.n.registry.Record(e.Agent); r != nil {
				recs = append(recs, r.Proto())
			}
		}
	}
	if len(recs) > 0 {
		b.queue(func(l *beatLink) { l.recs = append(l.recs, recs[:min(len(recs), recsPerBatch-len(l.recs))]...) })
	}
}

// pushLeave sends a newly applied leave to every neighbour.
func (b *beats) pushLeave(leave *protocolpb.Leave) {
	b.queue(func(l *beatLink) {
		if len(l.leaves) < leavesPerBatch {
			l.leaves = append(l.leaves, leave)
		}
	})
}

func (b *beats) loop() {
	t := time.NewTicker(flushEvery(b.n.cfg.HeartbeatInterval))
	defer t.Stop()
	for {
		select {
		case <-b.n.ctx.Done():
			return
		case <-t.C:
		case <-b.wake:
		}
		if b.n.frozen() {
			continue
		}
		b.maintain()
		b.flush()
	}
}

// maintain opens links to random connected, listed agents until this
// node has BeatDegree outbound links; it looks at most four times a
// heartbeat.
func (b *beats) maintain() {
	now := time.Now()
	b.mu.Lock()
	degree := b.n.cfg.BeatDegree
	switch {
	case b.soon:
		b.soon = false
		degree = min(degree, soonLinks)
	case now.Sub(b.lastMaintain) < b.n.cfg.HeartbeatInterval/4:
		b.mu.Unlock()
		return
	default:
		b.lastMaintain = now
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
		for _, p := range b.n.host().Network().Peers() {
			if b.links[p] != nil || b.dialing[p] {
				continue
			}
			if !b.n.members.isAdmitted(p) {
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
		for _, e := range b.n.registry.Entries() {
			if e.State == discovery.Alive.String() && b.links[e.PeerID] == nil && !b.dialing[e.PeerID] &&
				!slices.Contains(cands, e.PeerID) && b.n.host().Network().Connectedness(e.PeerID) != network.Connected {
				far = append(far, e.PeerID)
			}
		}
		rand.Shuffle(len(far), func(i, j int) { far[i], far[j] = far[j], far[i] })
		far = far[:min(len(far), short)]
	}
	for _, p := range append(cands, far...) {
		b.dialing[p] = true
	}
	b.mu.Unlock()
	for _, p := range cands {
		go b.open(p, false)
	}
	for _, p := range far {
		go b.open(p, true)
	}
}

// soonLinks is how many links a node with fewer looks for at once, when a
// sync taught it agents (linkSoon); the rest wait for the regular look.
const soonLinks = 2

// linkSoon makes the flush loop look for a second link at once when this
// node has only one: a newcomer that just learned the registry from its
// first contact has two paths within a flush, not a quarter heartbeat
// later (7.5 s at the default), during which its one link would be the
// only path of every beat, record and leave the mesh sends it. The rest
// wait for the regular look, so that nodes wiring up at a cold start do
// not dial far agents their wiring would have given them anyway (each
// link more costs every node's relay traffic).
func (b *beats) linkSoon() {
	b.mu.Lock()
	short := len(b.links)+len(b.dialing) < min(b.n.cfg.BeatDegree, soonLinks)
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
// first connects to it at the addresses of its record.
func (b *beats) open(p peer.ID, far bool) {
	defer func() {
		b.mu.Lock()
		delete(b.dialing, p)
		b.mu.Unlock()
	}()
	if far && !b.connect(p) {
		return
	}
	ctx, cancel := context.WithTimeout(b.n.ctx, b.n.cfg.AdmissionTimeout)
	defer cancel()
	s, err := b.n.host().NewStream(ctx, p, wire.ProtocolBeat)
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
func (b *beats) connect(p peer.ID) bool {
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil {
		return false
	}
	rec := b.n.registry.Record(k)
	if rec == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(b.n.ctx, b.n.cfg.AdmissionTimeout)
	defer cancel()
	return b.n.connect(ctx, peer.AddrInfo{ID: p, Addrs: rec.Addrs()}) == nil
}

// handleStream accepts a link from a listed agent. A dead agent may link:
// its own signed beat is what brings it back.
func (b *beats) handleStream(s network.Stream) {
	p := s.Conn().RemotePeer()
	if !b.n.members.isAdmitted(p) || !b.add(p, s, false) {
		s.Reset()
		return
	}
	b.read(p, s)
}

// add makes s the link to p unless there is one already, in which case s
// is only read from. It refuses when the node has too many links.
func (b *beats) add(p peer.ID, s network.Stream, outbound bool) bool {
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
func (b *beats) drop(p peer.ID, s network.Stream) {
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
func (b *beats) read(p peer.ID, s network.Stream) {
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
			b.n.blame(p, audit.Beat, trust.CodeMalformed)
			b.drop(p, s)
			return
		}
		if !b.n.frozen() && b.apply(p, &batch) {
			b.drop(p, s)
			return
		}
	}
}

// apply applies what a batch from p carries, each item unless the injected
// loss drops it. It reports whether p was cut off for hostile items.
func (b *beats) apply(p peer.ID, batch *protocolpb.BeatBatch) (cut bool) {
	lost := func() bool { return b.n.lost(p) }
	for _, raw := range batch.Revocations {
		if !lost() && b.n.blame(p, audit.Revocation, trust.CodeOf(b.n.applyRevocation(raw))) {
			return true
		}
	}
	for _, a := range batch.Records {
		if !lost() && b.n.blame(p, audit.Announcement, b.applyRecord(a)) {
			return true
		}
	}
	for _, l := range batch.Leaves {
		if !lost() && b.n.blame(p, audit.Leave, b.applyLeave(l)) {
			return true
		}
	}
	for _, beat := range batch.Beats {
		if !lost() && b.n.blame(p, audit.Beat, b.receive(p, beat)) {
			return true
		}
	}
	return false
}

// blame audits a relayed item's refusal with a code that p, which sent it,
// should have refused itself (forwarderFault), and spends p's rejection
// budget; it reports whether p was cut off. Other codes are not p's doing
// and pass.
func (n *Node) blame(p peer.ID, kind audit.Kind, code trust.Code) bool {
	if !forwarderFault[code] {
		return false
	}
	r := n.record(audit.In, kind, p.String())
	reject(&r, code, "")
	n.audit.Write(r)
	return n.gate.Penalize(p, code)
}

// applyRecord applies a record relayed on the overlay (which relays it on
// when it named a new agent).
func (b *beats) applyRecord(a *protocolpb.Announcement) trust.Code {
	return trust.CodeOf(b.n.applyRecord(a, discovery.Relayed, trust.PublicKey{}))
}

// applyLeave applies a leave relayed on the overlay and relays it on when
// it was news.
func (b *beats) applyLeave(l *protocolpb.Leave) trust.Code {
	_, err := b.n.applyLeave(l)
	return trust.CodeOf(err)
}

// receive applies one beat relayed by from and queues it for the other
// neighbours when it is news. It returns the code of a hostile beat.
func (b *beats) receive(from peer.ID, beat *protocolpb.Beat) trust.Code {
	if len(beat.Agent) != trust.PublicKeySize {
		return trust.CodeMalformed
	}
	agent := trust.PublicKey(beat.Agent)
	if agent.Equal(b.n.self) || beat.Seq <= b.n.registry.Seq(agent) {
		b.seen(from, agent, beat.Seq)
		return ""
	}
	if b.n.registry.State(agent) == 0 {
		// Not listed here: the beat would be dropped, so its signature is
		// not checked; learn the agent from whoever relayed it.
		b.n.syncSoon(from)
		return ""
	}
	if d := b.n.now().Sub(time.UnixMilli(beat.Timestamp)); d > b.n.cfg.DeadAfter || -d > b.n.cfg.DeadAfter {
		return "" // stale: it would be refused after the signature check
	}
	_, ts, err := discovery.VerifyBeat(beat)
	if err != nil {
		return trust.CodeOf(err)
	}
	if beat.Revocations != b.n.revs.Sum() && agent.Equal(b.linkKey(from)) {
		b.n.pullSoon(from) // a neighbour holds other revocations
	}
	evs, err := b.n.registry.Heartbeat(agent, beat.Seq, ts, b.n.now())
	b.n.emit(evs)
	switch trust.CodeOf(err) {
	case "":
		b.relay(from, agent, beat)
	case protocol.CodeUnlisted:
		b.n.syncSoon(from) // learn the agent from whoever relayed it
	case protocol.CodeReplay: // another neighbour was faster
		b.seen(from, agent, beat.Seq)
	}
	return ""
}

// linkKey returns the key of the neighbour p (zero when not linked).
func (b *beats) linkKey(p peer.ID) trust.PublicKey {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l := b.links[p]; l != nil {
		return l.key
	}
	return trust.PublicKey{}
}

// seen notes that from has agent's beat seq, so it is not sent back.
func (b *beats) seen(from peer.ID, agent trust.PublicKey, seq uint64) {
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
func (b *beats) relay(from peer.ID, agent trust.PublicKey, beat *protocolpb.Beat) {
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
func (b *beats) flush() {
	type write struct {
		p     peer.ID
		l     *beatLink
		batch *protocolpb.BeatBatch
	}
	var writes []write
	b.mu.Lock()
	for p, l := range b.links {
		if len(l.pending) == 0 && len(l.revs) == 0 && len(l.recs) == 0 && len(l.leaves) == 0 {
			continue
		}
		batch := &protocolpb.BeatBatch{Beats: make([]*protocolpb.Beat, 0, min(len(l.pending), beatsPerBatch)),
			Revocations: l.revs, Records: l.recs, Leaves: l.leaves}
		l.revs, l.recs, l.leaves = nil, nil, nil
		for _, beat := range l.pending {
			if len(batch.Beats) == beatsPerBatch {
				writes = append(writes, write{p, l, batch})
				batch = &protocolpb.BeatBatch{}
			}
			batch.Beats = append(batch.Beats, beat)
		}
		// A fresh map: one that once held every agent (after a
		// partition, or at start) would keep its size for good.
		l.pending = map[trust.PublicKey]*protocolpb.Beat{}
		writes = append(writes, write{p, l, batch})
	}
	b.mu.Unlock()
	deadline := time.Now().Add(b.n.cfg.AdmissionTimeout)
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

// links returns how many beat neighbours this node has.
func (b *beats) linkCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.links)
}
