package overlay

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// FlushEvery is a thirtieth of the heartbeat, within [2 ms, 1 s].
func TestFlushEvery(t *testing.T) {
	for _, tc := range []struct{ hb, want time.Duration }{
		{30 * time.Second, time.Second},
		{time.Hour, time.Second},
		{3 * time.Second, 100 * time.Millisecond},
		{60 * time.Millisecond, 2 * time.Millisecond},
		{30 * time.Millisecond, 2 * time.Millisecond},
		{0, 2 * time.Millisecond},
	} {
		if got := FlushEvery(tc.hb); got != tc.want {
			t.Errorf("FlushEvery(%s) = %s, want %s", tc.hb, got, tc.want)
		}
	}
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

const hb = time.Second

func key(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

type fx struct {
	b                 *Overlay
	reg               *discovery.Registry
	self              *trust.Identity
	agents            []*trust.Identity // 0 is listed at seq 1; 1 is not
	synced, pulled    []peer.ID
	emitted           int
	blamed            []trust.Code
	cutOn             trust.Code // Blame cuts p off for this code
	applied           []string   // the kinds Apply* saw, in order
	lost              func() bool
	digest            uint64
	neighbour, second peer.ID
}

func newFx(t testing.TB) *fx {
	t.Helper()
	f := &fx{}
	anchor, _ := trust.GenerateAnchorKey(key(1))
	v, err := trust.NewVerifier(trust.DefaultPolicy(anchor.Public()))
	if err != nil {
		t.Fatal(err)
	}
	f.self, _ = trust.GenerateIdentity(key(2))
	f.reg = discovery.NewRegistry(discovery.Config{Verifier: v, Self: f.self.Public(), DeadAfter: 3 * hb})
	for i := range 2 {
		id, _ := trust.GenerateIdentity(key(byte(10 + i)))
		f.agents = append(f.agents, id)
	}
	c, _ := trust.IssueCredential(anchor, f.agents[0].Public(), "agent", t0.Add(-time.Hour), 24*time.Hour)
	rec, err := discovery.NewRecord(f.agents[0], c, []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1")}, 1, hb, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Announce(rec, discovery.Direct, t0); err != nil {
		t.Fatal(err)
	}
	f.b = New(Deps{Self: f.self.Public(), Registry: f.reg, Clock: func() time.Time { return t0 },
		HeartbeatInterval: hb, DeadAfter: 3 * hb, AdmissionTimeout: time.Second, Degree: 3,
		ApplyRevocation: func([]byte) error { f.applied = append(f.applied, "revocation"); return nil },
		ApplyRecord: func(*protocolpb.Announcement) error {
			f.applied = append(f.applied, "record")
			return &trust.Error{Code: trust.CodeBadSignature, Link: -1}
		},
		ApplyLeave: func(*protocolpb.Leave) error { f.applied = append(f.applied, "leave"); return nil },
		Blame: func(_ peer.ID, _ audit.Kind, code trust.Code) bool {
			if code != "" {
				f.blamed = append(f.blamed, code)
			}
			return code != "" && code == f.cutOn
		},
		Emit:      func([]discovery.Event) { f.emitted++ },
		SyncSoon:  func(p peer.ID) { f.synced = append(f.synced, p) },
		PullSoon:  func(p peer.ID) { f.pulled = append(f.pulled, p) },
		RevDigest: func() uint64 { return f.digest },
		Lost:      func(peer.ID) bool { return f.lost != nil && f.lost() },
	})
	// Two neighbours: the agent itself, and another node.
	other, _ := trust.GenerateIdentity(key(20))
	f.neighbour, f.second = f.agents[0].Public().PeerID(), other.Public().PeerID()
	f.b.links[f.neighbour] = &beatLink{key: f.agents[0].Public(), pending: map[trust.PublicKey]*protocolpb.Beat{}}
	f.b.links[f.second] = &beatLink{key: other.Public(), pending: map[trust.PublicKey]*protocolpb.Beat{}}
	return f
}

func (f *fx) beat(i int, seq uint64, at time.Time, ok bool) *protocolpb.Beat {
	b := discovery.SignBeat(f.agents[i], seq, at)
	if !ok {
		b.Signature[0] ^= 1
	}
	return b
}

// receive refuses a malformed beat, drops before the signature check
// (broken signatures here pass unnoticed) the beats that change nothing
// (own, old, unlisted, stale), asks to sync on an unlisted agent, and
// reports a bad signature of a beat it would apply.
func TestReceiveDropsBeforeSignature(t *testing.T) {
	f := newFx(t)
	self := discovery.SignBeat(f.self, 9, t0)
	self.Signature[0] ^= 1
	for _, tc := range []struct {
		name string
		beat *protocolpb.Beat
		want trust.Code
		sync bool
	}{
		{"malformed agent", &protocolpb.Beat{Agent: []byte{1}, Seq: 5}, trust.CodeMalformed, false},
		{"own beat", self, "", false},
		{"old seq", f.beat(0, 1, t0, false), "", false},
		{"unlisted agent", f.beat(1, 5, t0, false), "", true},
		{"stale", f.beat(0, 5, t0.Add(-4*hb), false), "", false},
		{"from the future", f.beat(0, 5, t0.Add(4*hb), false), "", false},
		{"bad signature", f.beat(0, 5, t0, false), trust.CodeBadSignature, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.synced = nil
			if got := f.b.receive(f.second, tc.beat); got != tc.want {
				t.Fatalf("code %q, want %q", got, tc.want)
			}
			if synced := len(f.synced) == 1 && f.synced[0] == f.second; synced != tc.sync {
				t.Fatalf("synced %v, want sync %v", f.synced, tc.sync)
			}
			if f.reg.Seq(f.agents[0].Public()) != 1 || f.emitted != 0 {
				t.Fatal("a dropped beat reached the registry")
			}
		})
	}
}

// A good beat is applied once, queued for every neighbour but the one it
// came from and the agent itself, and a neighbour with another revocation
// digest is pulled from; the same beat again is not queued twice.
func TestReceiveAppliesAndRelays(t *testing.T) {
	f := newFx(t)
	third := peer.ID("third")
	f.b.links[third] = &beatLink{pending: map[trust.PublicKey]*protocolpb.Beat{}}
	agent := f.agents[0].Public()
	beat := f.beat(0, 5, t0, true)
	beat.Revocations = 42 // f.digest is 0
	if got := f.b.receive(f.neighbour, beat); got != "" {
		t.Fatalf("good beat: %q", got)
	}
	if f.reg.Seq(agent) != 5 || f.emitted != 1 {
		t.Fatalf("registry seq %d, emitted %d", f.reg.Seq(agent), f.emitted)
	}
	if len(f.pulled) != 1 || f.pulled[0] != f.neighbour {
		t.Fatalf("pulled %v, want the neighbour whose own beat carried another digest", f.pulled)
	}
	for p, want := range map[peer.ID]bool{f.neighbour: false, f.second: true, third: true} {
		if got := f.b.links[p].pending[agent] == beat; got != want {
			t.Errorf("queued for %s: %v, want %v", p, got, want)
		}
	}
	// From another neighbour (a replay now): no more emits, and that
	// neighbour is not sent what it has.
	if got := f.b.receive(f.second, beat); got != "" || f.emitted != 1 {
		t.Fatalf("again: %q, emitted %d", got, f.emitted)
	}
	if f.b.links[f.second].pending[agent] != nil {
		t.Fatal("the beat is still queued for a neighbour that sent it")
	}
	// A relayed beat (not the neighbour's own) with another digest pulls nothing.
	if f.b.receive(f.second, f.beat(0, 6, t0, true)); len(f.pulled) != 1 {
		t.Fatalf("pulled %v on a relayed beat", f.pulled)
	}
}

// apply takes a batch's items in order (revocations, records, leaves,
// beats), skips lost ones, blames each hostile item, and stops at the
// first that cuts the neighbour off.
func TestApplyBatch(t *testing.T) {
	batch := func(f *fx) *protocolpb.BeatBatch {
		return &protocolpb.BeatBatch{Revocations: [][]byte{{1}}, Records: []*protocolpb.Announcement{{}},
			Leaves: []*protocolpb.Leave{{}}, Beats: []*protocolpb.Beat{f.beat(0, 5, t0, false)}}
	}
	for _, tc := range []struct {
		name    string
		cutOn   trust.Code
		lost    bool
		cut     bool
		applied string
		blamed  string
	}{
		{"all applied", "", false, false, "[revocation record leave]", "[bad_signature bad_signature]"},
		{"cut at the record", trust.CodeBadSignature, false, true, "[revocation record]", "[bad_signature]"},
		{"all lost", trust.CodeBadSignature, true, false, "[]", "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFx(t)
			f.cutOn = tc.cutOn
			f.lost = func() bool { return tc.lost }
			if cut := f.b.apply(f.second, batch(f)); cut != tc.cut {
				t.Fatalf("cut %v, want %v", cut, tc.cut)
			}
			if got := fmt.Sprint(f.applied); got != tc.applied {
				t.Errorf("applied %s, want %s", got, tc.applied)
			}
			if got := fmt.Sprint(f.blamed); got != tc.blamed {
				t.Errorf("blamed %s, want %s", got, tc.blamed)
			}
		})
	}
}

// Push* queue for every link, within each kind's bound, and
// Originate replaces this node's pending beat.
func TestQueueBounds(t *testing.T) {
	f := newFx(t)
	for range revsPerBatch + 5 {
		f.b.PushRevocation([]byte{1})
	}
	for range leavesPerBatch + 5 {
		f.b.PushLeave(&protocolpb.Leave{})
	}
	agent := f.agents[0].Public()
	joined := make([]discovery.Event, maxQueuedRecs+5)
	for i := range joined {
		joined[i] = discovery.Event{Agent: agent, Reason: "joined"}
	}
	f.b.PushRecords(append(joined, discovery.Event{Agent: agent, Reason: "heartbeat"}))
	f.b.PushRecords([]discovery.Event{{Agent: f.agents[1].Public(), Reason: "joined"}}) // not listed: nothing
	f.b.Originate(discovery.SignBeat(f.self, 1, t0))
	own := discovery.SignBeat(f.self, 2, t0)
	f.b.Originate(own)
	for p, l := range f.b.links {
		if len(l.revs) != revsPerBatch || len(l.leaves) != leavesPerBatch || len(l.recs) != maxQueuedRecs {
			t.Errorf("%s: %d revocations, %d leaves, %d records queued", p, len(l.revs), len(l.leaves), len(l.recs))
		}
		if l.pending[f.self.Public()] != own {
			t.Errorf("%s: own beat not the newest", p)
		}
	}
	select {
	case <-f.b.wake:
	default:
		t.Fatal("queueing did not wake the flush loop")
	}
}

// listAgent1 enters the record of agent 1 (not listed until then) in the
// registry, as a sync or a relayed record would, and hands the events to
// PushRecords, as the node's learn does.
func (f *fx) listAgent1(t *testing.T) {
	t.Helper()
	anchor, _ := trust.GenerateAnchorKey(key(1))
	c, _ := trust.IssueCredential(anchor, f.agents[1].Public(), "late", t0.Add(-time.Hour), 24*time.Hour)
	rec, err := discovery.NewRecord(f.agents[1], c, nil, 1, hb, t0)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := f.reg.Announce(rec, discovery.Relayed, t0)
	if err != nil {
		t.Fatal(err)
	}
	f.b.PushRecords(evs)
}

// The beat of an agent this node does not list is held unchecked, and its
// relay asked for the agent's record; when the record arrives the beat is
// checked, applied and relayed (not back to the relay). A forged one is
// then refused and blamed; one held longer than a heartbeat is dropped.
func TestUnlistedBeatWaitsForItsRecord(t *testing.T) {
	late := func(f *fx) trust.PublicKey { return f.agents[1].Public() }
	t.Run("genuine", func(t *testing.T) {
		f := newFx(t)
		beat := f.beat(1, 5, t0, true)
		if got := f.b.receive(f.second, beat); got != "" {
			t.Fatalf("code %q", got)
		}
		if w := f.b.links[f.second].want; len(w) != 1 || !late(f).Equal(trust.PublicKey(w[0])) {
			t.Fatalf("asked the relay for %x", w)
		}
		if len(f.b.links[f.neighbour].want) != 0 {
			t.Fatal("asked a neighbour that did not relay the beat")
		}
		f.b.receive(f.second, beat) // again: one ask
		if len(f.b.links[f.second].want) != 1 || len(f.b.held) != 1 {
			t.Fatalf("%d asks, %d held", len(f.b.links[f.second].want), len(f.b.held))
		}
		f.listAgent1(t)
		if got := f.reg.Seq(late(f)); got != 5 {
			t.Fatalf("registry seq %d after the record, want the held beat's 5", got)
		}
		if f.b.links[f.neighbour].pending[late(f)] != beat || f.b.links[f.second].pending[late(f)] != nil {
			t.Fatal("the held beat was not relayed to the other neighbour only")
		}
		if len(f.b.held) != 0 || f.blamed != nil {
			t.Fatalf("%d held, blamed %v", len(f.b.held), f.blamed)
		}
	})
	t.Run("forged", func(t *testing.T) {
		f := newFx(t)
		f.b.receive(f.second, f.beat(1, 5, t0, false))
		if f.blamed != nil {
			t.Fatal("a held beat was checked before its record came")
		}
		f.listAgent1(t)
		if fmt.Sprint(f.blamed) != "[bad_signature]" || f.reg.Seq(late(f)) != 1 {
			t.Fatalf("blamed %v, seq %d", f.blamed, f.reg.Seq(late(f)))
		}
	})
	t.Run("held too long", func(t *testing.T) {
		f := newFx(t)
		f.b.receive(f.second, f.beat(1, 5, t0, true))
		h := f.b.held[late(f)]
		h.at = h.at.Add(-hb)
		f.b.held[late(f)] = h
		f.listAgent1(t)
		if f.reg.Seq(late(f)) != 1 || len(f.b.held) != 0 {
			t.Fatalf("seq %d, %d held", f.reg.Seq(late(f)), len(f.b.held))
		}
	})
}

// However many beats of unlisted agents a neighbour relays (an insider
// with fresh keys, forged signatures), this node holds at most maxHeld,
// asks at most maxWant a batch, and checks none of their signatures.
func TestHeldBeatsAreBounded(t *testing.T) {
	f := newFx(t)
	for i := range maxHeld + 100 {
		id, _ := trust.GenerateIdentity(bytes.NewReader(bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, 11)))
		beat := discovery.SignBeat(id, 5, t0)
		beat.Signature[0] ^= 1
		if got := f.b.receive(f.second, beat); got != "" {
			t.Fatalf("code %q", got)
		}
	}
	if len(f.b.held) != maxHeld || len(f.b.links[f.second].want) != maxWant || f.blamed != nil {
		t.Fatalf("%d held, %d asks, blamed %v", len(f.b.held), len(f.b.links[f.second].want), f.blamed)
	}
}

// A neighbour's asks are answered with the records this node lists (none
// for agents it does not), at most maxWantAnswers a heartbeat; an ask that
// is not a key, or too many in one batch, ends the link before anything
// else in the batch is applied.
func TestWantIsAnsweredWithinBounds(t *testing.T) {
	f := newFx(t)
	listed, unlisted := f.agents[0].Public(), f.agents[1].Public()
	if cut := f.b.apply(f.second, &protocolpb.BeatBatch{Want: [][]byte{listed[:], unlisted[:]}}); cut {
		t.Fatal("cut on an honest ask")
	}
	recs := f.b.links[f.second].recs
	if len(recs) != 1 || !bytes.Equal(recs[0].Body, f.reg.Record(listed).Proto().Body) || f.blamed != nil {
		t.Fatalf("answered %d records, blamed %v", len(recs), f.blamed)
	}
	many := make([][]byte, maxWant)
	for i := range many {
		many[i] = listed[:]
	}
	for range 3 {
		f.b.apply(f.second, &protocolpb.BeatBatch{Want: many})
	}
	if got := len(f.b.links[f.second].recs); got != maxWantAnswers {
		t.Fatalf("%d records answered within a heartbeat, want %d", got, maxWantAnswers)
	}
	for name, want := range map[string][][]byte{
		"not a key": {{1, 2, 3}},
		"too many":  append(many, listed[:]),
	} {
		t.Run(name, func(t *testing.T) {
			f := newFx(t)
			batch := &protocolpb.BeatBatch{Want: want, Revocations: [][]byte{{1}}}
			if cut := f.b.apply(f.second, batch); !cut {
				t.Fatal("not cut")
			}
			if fmt.Sprint(f.blamed) != "[malformed]" || f.applied != nil || len(f.b.links[f.second].recs) != 0 {
				t.Fatalf("blamed %v, applied %v, %d answered", f.blamed, f.applied, len(f.b.links[f.second].recs))
			}
		})
	}
}

// A leave goes in two consecutive batches of each link, then no more;
// records beyond a batch's share go in batches of their own.
func TestTakeSendsLeavesTwice(t *testing.T) {
	f := newFx(t)
	leave := &protocolpb.Leave{Seq: 7}
	f.b.PushLeave(leave)
	agent := f.agents[0].Public()
	joined := make([]discovery.Event, 2*recsPerBatch+1)
	for i := range joined {
		joined[i] = discovery.Event{Agent: agent, Reason: "joined"}
	}
	f.b.PushRecords(joined)
	l := f.b.links[f.second]
	first := l.take()
	if len(first) != 3 || len(first[0].Leaves) != 1 || len(first[0].Records)+len(first[1].Records)+len(first[2].Records) != len(joined) {
		t.Fatalf("first flush: %d batches", len(first))
	}
	second := l.take()
	if len(second) != 1 || len(second[0].Leaves) != 1 || second[0].Leaves[0] != leave || len(second[0].Records) != 0 {
		t.Fatalf("second flush: %v", second)
	}
	if third := l.take(); third != nil {
		t.Fatalf("third flush: %v", third)
	}
}
