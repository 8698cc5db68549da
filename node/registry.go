package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/node/internal/overlay"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// maxSyncSize bounds one sync response.
const maxSyncSize = 32 << 20

// liveness is the node's half of the registry: its own sequence numbers,
// its current record, and the subscribers to registry events.
type liveness struct {
	seq       atomic.Uint64
	mu        sync.Mutex
	record    *discovery.Record
	listeners []func(discovery.Event)
	lastSync  map[peer.ID]time.Time
	// announceSoon asks the heartbeat loop for a full record at the next
	// beat (after an admission: peers that joined meanwhile may not know
	// this node), at most every announceMinGap beats.
	announceSoon atomic.Bool
	resynced     atomic.Bool // resyncOnce ran
	lastPull     map[peer.ID]time.Time
	// Per-key limits of what peers make this node do: answers per peer
	// and protocol (sync, revocation pull, hello), new records per listed
	// agent, renewals per agent.
	serving, records, renewals *limit.Keyed
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
	n.h.SetStreamHandler(wire.ProtocolSync, n.gateWrap(n.handleSync))
	n.h.SetStreamHandler(wire.ProtocolRevocations, n.gateWrap(n.handleSync))
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
		n.maybeRenew()
		n.pruneRevocations(n.now())
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
			n.members.forgetStrangers()
		}
	}
}

// registryValidator applies records and leaves. A record must be the
// pubsub author's (signature checked by pubsub under StrictSign); a leave
// carries the leaving agent's own signature, so any node may relay it. An
// item broken or forged in itself is rejected (which lowers the
// forwarder's score) and charged to the forwarder's budget; replays, stale
// items and what rests on this node's own anchors or state are ignored.
func (n *Node) registryValidator(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if n.frozen() {
		return pubsub.ValidationIgnore
	}
	author, err := trust.PublicKeyFromPeerID(m.GetFrom())
	if err != nil {
		n.blame(m.ReceivedFrom, audit.Announcement, trust.CodeOf(err)) // weak_key is no forwarder's fault
		return verdict(err)
	}
	if author.Equal(n.self) {
		return pubsub.ValidationAccept
	}
	var rm protocolpb.RegistryMessage
	kind := audit.Announcement
	if err := proto.Unmarshal(m.Data, &rm); err != nil {
		n.blame(m.ReceivedFrom, kind, trust.CodeMalformed)
		return pubsub.ValidationReject
	}
	switch x := rm.Msg.(type) {
	case *protocolpb.RegistryMessage_Announce:
		err = n.applyRecord(x.Announce, discovery.Direct, author)
	case *protocolpb.RegistryMessage_Leave:
		// Signed by the leaving agent; any node may relay it.
		kind = audit.Leave
		_, err = n.applyLeave(x.Leave)
	default:
		err = protocol.Reject(trust.CodeMalformed, "empty registry message")
	}
	n.blame(m.ReceivedFrom, kind, trust.CodeOf(err))
	return verdict(err)
}

// checkRecord is the part of applying a record a peer sent or relayed that
// comes before the registry: a record the registry holds already is
// nothing new (nil, nil); one whose bytes were refused before is refused
// again for the cost of a hash; otherwise its structure and self-signature
// are checked, and that it is author's when author is set (a pubsub
// author must publish only its own record). key names the bytes for
// remembering a refusal.
func (n *Node) checkRecord(a *protocolpb.Announcement, author trust.PublicKey) (rec *discovery.Record, key [32]byte, err error) {
	if n.registry.Holds(a) {
		return nil, key, nil
	}
	key = refused.Key("record", author[:], a.GetBody(), a.GetSignature())
	if err := n.bad.Get(key); err != nil {
		return nil, key, err
	}
	if err := n.recordRate(a); err != nil {
		return nil, key, err
	}
	if err := n.refusedUnsigned(a); err != nil {
		return nil, key, err
	}
	rec, err = discovery.ParseRecord(a)
	if err == nil && !author.IsZero() && !rec.Agent.Equal(author) {
		err = protocol.Reject(protocol.CodeImpersonation, "record of %s published by %s", rec.Agent, author)
	}
	if err != nil {
		n.bad.Add(key, err)
		return nil, key, err
	}
	return rec, key, nil
}

// refusedUnsigned refuses, before any signature check, a record this node
// would refuse for its own configuration whatever its signatures: an
// agent off the allowlist, a credential of an anchor it does not trust or
// longer than its policy allows. Such records, which cost an outsider a
// signature each to make, cost the node a decode.
func (n *Node) refusedUnsigned(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	if !n.registry.Allowed(trust.PublicKey(b.Agent)) {
		return protocol.Reject(protocol.CodeUnlisted, "%s is not on this node's allowlist", trust.PublicKey(b.Agent))
	}
	c, err := trust.CredentialFromProto(b.Credential)
	if err != nil {
		return nil
	}
	if !n.verifier.IsAnchor(c.Issuer) {
		return protocol.Reject(trust.CodeUntrustedRoot, "credential issuer %s is not a trusted anchor", c.Issuer)
	}
	if max := n.verifier.Policy().MaxCredentialLifetime; c.Expires.Sub(c.NotBefore) > max {
		return protocol.Reject(trust.CodeLifetime, "credential lifetime %s exceeds the maximum %s", c.Expires.Sub(c.NotBefore), max)
	}
	return nil
}

// recordBurst and one a heartbeat bound the new records of one listed
// agent that this node checks: an honest agent signs a new record when it
// starts, renews, changes addresses, after admissions (at most every tenth
// beat) and every sixtieth beat. Each new record costs a signature check
// at every node it reaches; past the bound it is refused before the check
// and not relayed. Records of agents not listed yet (joins) are not
// limited here.
const recordBurst = 4

// recordRate refuses a new record of a listed agent past its rate, before
// any signature check.
func (n *Node) recordRate(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	agent := trust.PublicKey(b.Agent)
	if n.registry.State(agent) == 0 || b.Seq <= n.registry.Seq(agent) {
		return nil // a join, or an old record: checked (and cached) as before
	}
	ok := n.live.records.Allow(string(agent[:]))
	if !ok {
		return protocol.Reject(protocol.CodeFlood, "new records of %s past %d at once and one a heartbeat", agent, recordBurst)
	}
	return nil
}

// applyRecord checks a record (checkRecord) and enters it in the registry
// (learn), remembering a final refusal.
func (n *Node) applyRecord(a *protocolpb.Announcement, src discovery.Source, author trust.PublicKey) error {
	rec, key, err := n.checkRecord(a, author)
	if err != nil || rec == nil {
		return err
	}
	if err := n.learn(rec, src); err != nil {
		n.bad.Add(key, err)
		return err
	}
	return nil
}

// applyLeave applies a leave, and relays it on the beat overlay when it
// was news. A leave of an agent this node does not list, or one not newer
// than the agent's last sequence number, changes nothing and is dropped
// before its signature is checked.
func (n *Node) applyLeave(l *protocolpb.Leave) (news bool, err error) {
	agent, err := trust.PublicKeyFromBytes(l.GetAgent())
	if err != nil {
		return false, err
	}
	if n.registry.State(agent) == 0 {
		return false, protocol.Reject(protocol.CodeUnlisted, "leave of %s, which this node does not list", agent)
	}
	if seq := n.registry.Seq(agent); l.GetSeq() <= seq {
		return false, protocol.Reject(protocol.CodeReplay, "leave of %s has seq %d, already at %d", agent, l.GetSeq(), seq)
	}
	if _, err := discovery.VerifyLeave(l); err != nil {
		return false, err
	}
	evs, err := n.registry.Leave(agent, l.Seq, n.now())
	n.emit(evs)
	if err == nil && len(evs) > 0 {
		n.beats.PushLeave(l)
	}
	return len(evs) > 0, err
}

// verdict maps the result of applying a relayed item to pubsub's: accept,
// reject what the forwarder should have refused itself, ignore the rest.
func verdict(err error) pubsub.ValidationResult {
	switch code := trust.CodeOf(err); {
	case err == nil:
		return pubsub.ValidationAccept
	case forwarderFault[code] || code == "":
		return pubsub.ValidationReject
	default:
		return pubsub.ValidationIgnore
	}
}

// revocationValidator verifies and applies a revocation, then forwards it.
func (n *Node) revocationValidator(_ context.Context, _ peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	err := n.applyRevocation(m.Data)
	n.blame(m.ReceivedFrom, audit.Revocation, trust.CodeOf(err))
	return verdict(err)
}

// handleSync answers the join-time exchange, and the revocations pull
// (the same response without records), to admitted peers only.
func (n *Node) handleSync(s network.Stream) {
	defer s.Close()
	p := s.Conn().RemotePeer()
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil || n.registry.Admit(k, n.now()) != nil || !n.serveAllowed(p, s.Protocol()) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	var snap []*protocolpb.Announcement
	if s.Protocol() == wire.ProtocolSync {
		snap = n.registry.Snapshot()
		if rec, err := n.currentRecord(); err == nil {
			snap = append(snap, rec.Proto())
		}
	}
	b, err := proto.Marshal(&protocolpb.SyncResponse{Announcements: snap, Revocations: n.revocations()})
	if err != nil || msgio.NewVarintWriter(s).WriteMsg(b) != nil {
		s.Reset()
	}
}

// serveBurst and serveEvery bound the sync answers (and revocation pulls)
// one peer gets: an honest node asks at admission, once more three gossip
// heartbeats later, and at most once a heartbeat after that, for each.
const serveBurst = 4

// serveAllowed reports whether p may have another answer of protocol
// which now; past serveBurst it gets one a heartbeat.
func (n *Node) serveAllowed(p peer.ID, which p2pprotocol.ID) bool {
	return n.live.serving.Allow(string(p) + string(which))
}

// resyncOnce asks p, the first peer that admitted this node, for its
// records and revocations a second time three gossip heartbeats later: a
// revocation published before gossipsub grafted the new node into its mesh
// is neither forwarded to it nor offered in gossip, and must not be missed.
func (n *Node) resyncOnce(p peer.ID) {
	if !n.live.resynced.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTimer(3 * gossipParams(n.cfg.HeartbeatInterval).HeartbeatInterval)
		defer t.Stop()
		select {
		case <-n.ctx.Done():
		case <-t.C:
			n.syncFrom(p)
		}
	}()
}

// syncSoon runs syncFrom(p) unless one ran for p within a heartbeat.
func (n *Node) syncSoon(p peer.ID) {
	if n.due(n.live.lastSync, p) {
		go n.syncFrom(p)
	}
}

// pullSoon asks p for its revocations unless it did within a heartbeat.
func (n *Node) pullSoon(p peer.ID) {
	if n.due(n.live.lastPull, p) {
		go n.fetch(p, wire.ProtocolRevocations)
	}
}

// due reports whether p's entry in the rate-limit map m is at least a
// heartbeat old, and if so sets it to now. Past 1024 peers, m forgets the
// entries older than a heartbeat, which no longer limit anything.
func (n *Node) due(m map[peer.ID]time.Time, p peer.ID) bool {
	n.live.mu.Lock()
	defer n.live.mu.Unlock()
	now, hb := time.Now(), n.cfg.HeartbeatInterval
	if now.Sub(m[p]) < hb {
		return false
	}
	m[p] = now
	if len(m) > 1024 {
		for q, t := range m {
			if now.Sub(t) >= hb {
				delete(m, q)
			}
		}
	}
	return true
}

// syncFrom asks p for its records and revocations and applies them as
// relayed: they teach who exists, never who is alive.
func (n *Node) syncFrom(p peer.ID) { n.fetch(p, wire.ProtocolSync) }

func (n *Node) fetch(p peer.ID, which p2pprotocol.ID) {
	h := n.host()
	if h == nil || n.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, which)
	if err != nil {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	raw, err := readGrowing(s, maxSyncSize)
	if err != nil {
		s.Reset()
		return
	}
	var resp protocolpb.SyncResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return
	}
	n.applySync(p, &resp)
}

// maxRefusedPerAnswer bounds the items of one sync answer this node
// refuses for its own configuration or state (not the responder's fault,
// so not charged): past it, the rest of the answer is dropped. An honest
// answer has few (an anchor being rotated in, an allowlist narrower than
// the responder's); what it misses comes again by gossip.
const maxRefusedPerAnswer = 64

// applySync applies what p answered to a sync fetch.
func (n *Node) applySync(p peer.ID, resp *protocolpb.SyncResponse) {
	// An item broken or forged in itself is the responder's doing (an
	// honest node serves only what it verified): it is charged for it and
	// the rest of the answer is dropped.
	refused := 0
	fault := func(kind audit.Kind, err error) bool {
		code := trust.CodeOf(err)
		n.blame(p, kind, code) // audited and charged when it is p's fault
		if err != nil {
			refused++
		}
		return forwarderFault[code] || refused > maxRefusedPerAnswer
	}
	for _, r := range resp.Revocations {
		if fault(audit.Revocation, n.applyRevocation(r)) {
			return
		}
	}
	now := n.now()
	learned := false
	for _, a := range resp.Announcements {
		rec, key, err := n.checkRecord(a, trust.PublicKey{})
		if fault(audit.Announcement, err) {
			return
		}
		if err != nil || rec == nil {
			continue
		}
		evs, err := n.registry.Announce(rec, discovery.Relayed, now)
		n.bad.Add(key, err)
		n.emit(evs)
		learned = learned || len(evs) > 0
		if fault(audit.Announcement, err) { // a forged credential in the record
			break
		}
	}
	if learned {
		n.beats.LinkSoon() // agents to link to, if this node has too few links
	}
}

// readGrowing reads one length-prefixed frame of at most max bytes, its
// buffer growing with the bytes that arrive: a peer that announces a large
// frame and sends little makes the node hold what it sent, not what it
// announced.
func readGrowing(r io.Reader, max int) ([]byte, error) {
	br := bufio.NewReaderSize(r, 4096)
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, msgio.ErrMsgTooLarge
	}
	buf, err := io.ReadAll(io.LimitReader(br, int64(n)))
	if err != nil {
		return nil, err
	}
	if uint64(len(buf)) != n {
		return nil, io.ErrUnexpectedEOF
	}
	return buf, nil
}

// sendLeave tells the mesh this node is stopping: on the registry topic,
// and directly to every connected peer, waiting (at most the admission
// timeout) for their acknowledgements so that the leave is out before the
// connections close.
func (n *Node) sendLeave() {
	msg := &protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Leave{Leave: discovery.SignLeave(n.cfg.Identity, n.nextSeq(), n.now())}}
	_ = n.publishRegistry(msg)
	b, err := proto.Marshal(msg)
	if err != nil {
		return
	}
	h := n.host()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range h.Network().Peers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := h.NewStream(ctx, p, wire.ProtocolLeave)
			if err != nil {
				return
			}
			defer s.Close()
			dl, _ := ctx.Deadline()
			_ = s.SetDeadline(dl)
			if msgio.NewVarintWriter(s).WriteMsg(b) != nil {
				s.Reset()
				return
			}
			var ack [1]byte
			_, _ = s.Read(ack[:])
		}()
	}
	wg.Wait()
}

// handleLeave applies a leave delivered directly, relays it, and acks.
func (n *Node) handleLeave(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	raw, err := msgio.NewVarintReaderSize(s, 1024).ReadMsg()
	if err != nil {
		s.Reset()
		return
	}
	var rm protocolpb.RegistryMessage
	l := (*protocolpb.Leave)(nil)
	if proto.Unmarshal(raw, &rm) == nil {
		if x, ok := rm.Msg.(*protocolpb.RegistryMessage_Leave); ok {
			l = x.Leave
		}
	}
	news, err := n.applyLeave(l)
	if code := trust.CodeOf(err); forwarderFault[code] {
		n.gate.Penalize(s.Conn().RemotePeer(), code)
		s.Reset()
		return
	}
	if news {
		go func() { _ = n.publishRegistry(&rm) }()
	}
	_, _ = s.Write([]byte{1})
}
