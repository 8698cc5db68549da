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

// Push* queue for every link, within each kind's per-batch bound, and
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
	joined := make([]discovery.Event, recsPerBatch+5)
	for i := range joined {
		joined[i] = discovery.Event{Agent: agent, Reason: "joined"}
	}
	f.b.PushRecords(append(joined, discovery.Event{Agent: agent, Reason: "heartbeat"}))
	f.b.PushRecords([]discovery.Event{{Agent: f.agents[1].Public(), Reason: "joined"}}) // not listed: nothing
	f.b.Originate(discovery.SignBeat(f.self, 1, t0))
	own := discovery.SignBeat(f.self, 2, t0)
	f.b.Originate(own)
	for p, l := range f.b.links {
		if len(l.revs) != revsPerBatch || len(l.leaves) != leavesPerBatch || len(l.recs) != recsPerBatch {
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
