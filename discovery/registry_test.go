package discovery

import (
	"bytes"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

const hb = 100 * time.Millisecond

type fx struct {
	anchor *trust.AnchorKey
	v      *trust.Verifier
	self   *trust.Identity
	agents []*trust.Identity
	creds  []*trust.Credential
}

func newFx(t testing.TB, n int) *fx {
	f := &fx{}
	f.anchor, _ = trust.GenerateAnchorKey(bytes.NewReader(bytes.Repeat([]byte{1}, 32)))
	f.v, _ = trust.NewVerifier(trust.DefaultPolicy(f.anchor.Public()))
	f.self, _ = trust.GenerateIdentity(bytes.NewReader(bytes.Repeat([]byte{2}, 32)))
	for i := 0; i < n; i++ {
		id, _ := trust.GenerateIdentity(bytes.NewReader(bytes.Repeat([]byte{byte(10 + i)}, 32)))
		c, err := trust.IssueCredential(f.anchor, id.Public(), "agent-"+string(rune('a'+i)), t0.Add(-time.Hour), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f.agents, f.creds = append(f.agents, id), append(f.creds, c)
	}
	return f
}

func (f *fx) registry() *Registry {
	return NewRegistry(Config{Verifier: f.v, Self: f.self.Public(), DeadAfter: 3 * hb})
}

func (f *fx) record(t testing.TB, i int, seq uint64, at time.Time) *Record {
	t.Helper()
	r, err := NewRecord(f.agents[i], f.creds[i], []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/4001")}, seq, hb, at)
	if err != nil {
		t.Fatal(err)
	}
	// Through the wire.
	b, _ := proto.Marshal(r.Proto())
	var a protocolpb.Announcement
	_ = proto.Unmarshal(b, &a)
	p, err := ParseRecord(&a)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func want(t *testing.T, err error, code trust.Code) {
	t.Helper()
	if trust.CodeOf(err) != code {
		t.Fatalf("want %q, got %v", code, err)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	f := newFx(t, 1)
	r := f.registry()
	a := f.agents[0].Public()
	want(t, r.Admit(a, t0), protocol.CodeUnlisted)
	evs, err := r.Announce(f.record(t, 0, 10, t0), Direct, t0)
	if err != nil || len(evs) != 1 || evs[0].To != Alive {
		t.Fatalf("announce: %v %+v", err, evs)
	}
	want(t, r.Admit(a, t0), "")
	// Heartbeats with increasing seq keep it alive; a replayed one is refused.
	if _, err := r.Heartbeat(a, 11, t0.Add(hb), t0.Add(hb)); err != nil {
		t.Fatal(err)
	}
	_, err = r.Heartbeat(a, 11, t0.Add(hb), t0.Add(hb))
	want(t, err, protocol.CodeReplay)
	_, err = r.Heartbeat(a, 12, t0.Add(-time.Hour), t0.Add(hb))
	want(t, err, protocol.CodeStale)
	// Silence: suspect after 2 intervals, dead after DeadAfter.
	if evs := r.Tick(t0.Add(hb + 2*hb + time.Millisecond)); len(evs) != 1 || evs[0].To != Suspect {
		t.Fatalf("tick: %+v", evs)
	}
	want(t, r.Admit(a, t0.Add(3*hb)), "") // a suspect still talks
	if evs := r.Tick(t0.Add(hb + 3*hb + time.Millisecond)); len(evs) != 1 || evs[0].To != Dead {
		t.Fatalf("tick: %+v", evs)
	}
	now := t0.Add(5 * hb)
	want(t, r.Admit(a, now), protocol.CodeDead)
	want(t, r.AdmitHolder(a, now), protocol.CodeDead)
	// A relayed record does not revive it, even with a higher seq.
	if _, err := r.Announce(f.record(t, 0, 20, now), Relayed, now); err != nil {
		t.Fatal(err)
	}
	want(t, r.Admit(a, now), protocol.CodeDead)
	// Its own heartbeat with a higher seq does.
	_, err = r.Heartbeat(a, 20, now, now)
	want(t, err, protocol.CodeReplay) // 20 is the record's seq: not above it
	evs, err = r.Heartbeat(a, 21, now, now)
	if err != nil || len(evs) != 1 || evs[0].From != Dead || evs[0].To != Alive {
		t.Fatalf("revive: %v %+v", err, evs)
	}
	want(t, r.Admit(a, now), "")
	// A leave drops it at once; only a newer heartbeat brings it back.
	evs, _ = r.Leave(a, 22, now)
	if len(evs) != 1 || evs[0].To != Dead || evs[0].Reason != "leave" {
		t.Fatalf("leave: %+v", evs)
	}
	want(t, r.Admit(a, now), protocol.CodeDead)
	_, err = r.Leave(a, 22, now)
	want(t, err, protocol.CodeReplay)
}

func TestRecordsAreChecked(t *testing.T) {
	t.Parallel()
	f := newFx(t, 2)
	r := f.registry()
	good := f.record(t, 0, 1, t0)
	// Altered: someone else's credential in agent 0's record, re-signed by agent 0.
	b := &protocolpb.AnnouncementBody{}
	_ = proto.Unmarshal(good.Proto().Body, b)
	b.Credential = f.creds[1].Proto()
	body, _ := proto.Marshal(b)
	_, err := ParseRecord(&protocolpb.Announcement{Body: body, Signature: f.agents[0].Sign(DomainAnnounce, body)})
	want(t, err, protocol.CodeImpersonation)
	// Tampered body, old signature.
	_, err = ParseRecord(&protocolpb.Announcement{Body: body, Signature: good.Proto().Signature})
	want(t, err, trust.CodeBadSignature)
	// A credential from another anchor.
	other, _ := trust.GenerateAnchorKey(bytes.NewReader(bytes.Repeat([]byte{9}, 32)))
	oc, _ := trust.IssueCredential(other, f.agents[0].Public(), "x", t0, time.Hour)
	rec, _ := NewRecord(f.agents[0], oc, nil, 1, hb, t0)
	_, err = r.Announce(rec, Direct, t0)
	want(t, err, trust.CodeUntrustedRoot)
	// Old record straight from the agent (replayed after the window).
	_, err = r.Announce(f.record(t, 0, 1, t0.Add(-time.Hour)), Direct, t0)
	want(t, err, protocol.CodeStale)
	// Lower seq than known: replay. Identical re-send: fine.
	if _, err := r.Announce(good, Direct, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Announce(good, Direct, t0); err != nil {
		t.Fatalf("identical re-send: %v", err)
	}
	_, err = r.Announce(f.record(t, 0, 0, t0), Direct, t0)
	want(t, err, protocol.CodeReplay)
}

func TestRevokedAndExpiredAreRemoved(t *testing.T) {
	t.Parallel()
	f := newFx(t, 2)
	r := f.registry()
	for i := range f.agents {
		if _, err := r.Announce(f.record(t, i, 1, t0), Direct, t0); err != nil {
			t.Fatal(err)
		}
	}
	rev, _ := trust.RevokeAgent(f.anchor, f.agents[0].Public(), t0, t0, time.Hour)
	if err := f.v.AddRevocation(rev, t0); err != nil {
		t.Fatal(err)
	}
	evs := r.Tick(t0)
	if len(evs) != 1 || evs[0].Reason != "revoked" || r.Len() != 1 {
		t.Fatalf("revocation: %+v", evs)
	}
	want(t, r.Admit(f.agents[0].Public(), t0), protocol.CodeUnlisted)
	later := t0.Add(24 * time.Hour)
	_ = r.Tick(later)
	if r.Len() != 0 {
		t.Fatal("expired credential kept")
	}
}

func TestAllowlistAndBound(t *testing.T) {
	t.Parallel()
	f := newFx(t, 3)
	r := NewRegistry(Config{Verifier: f.v, Self: f.self.Public(), Allowlist: []trust.PublicKey{f.agents[0].Public(), f.agents[1].Public()}, MaxEntries: 1})
	_, err := r.Announce(f.record(t, 2, 1, t0), Direct, t0)
	want(t, err, protocol.CodeUnlisted)
	if _, err := r.Announce(f.record(t, 0, 1, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	_, err = r.Announce(f.record(t, 1, 1, t0), Direct, t0)
	want(t, err, trust.CodeFull)
	if got := len(r.Snapshot()); got != 1 {
		t.Fatalf("snapshot has %d", got)
	}
	e := r.Entries()
	if len(e) != 1 || e[0].State != Alive || e[0].Name != "agent-a" {
		t.Fatalf("entries: %+v", e)
	}
}

// A record older than the last heartbeat is no sign of life, even when it
// arrives directly and its timestamp is recent: only something the agent
// signed after its last heartbeat brings it back from dead.
func TestOldRecordDoesNotRevive(t *testing.T) {
	t.Parallel()
	f := newFx(t, 1)
	r := f.registry()
	k := f.agents[0].Public()
	if _, err := r.Announce(f.record(t, 0, 5, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Heartbeat(k, 7, t0.Add(hb), t0.Add(hb)); err != nil {
		t.Fatal(err)
	}
	later := t0.Add(hb + 4*hb)
	r.Tick(later)
	if st := r.State(k); st != Dead {
		t.Fatalf("state %v, want dead", st)
	}
	if evs, err := r.Announce(f.record(t, 0, 6, later), Direct, later); err != nil || len(evs) != 0 || r.State(k) != Dead {
		t.Fatalf("record seq 6 after beat 7: %v %v, state %v", evs, err, r.State(k))
	}
	if evs, err := r.Announce(f.record(t, 0, 8, later), Direct, later); err != nil || len(evs) != 1 || r.State(k) != Alive {
		t.Fatalf("record seq 8: %v %v, state %v", evs, err, r.State(k))
	}
	if r.Seq(k) != 8 {
		t.Fatalf("seq %d, want 8", r.Seq(k))
	}
}

// Holds recognises exactly the record held, and nothing else.
func TestHolds(t *testing.T) {
	t.Parallel()
	f := newFx(t, 1)
	r := f.registry()
	rec := f.record(t, 0, 5, t0)
	if r.Holds(rec.Proto()) {
		t.Fatal("holds a record never announced")
	}
	if _, err := r.Announce(rec, Direct, t0); err != nil {
		t.Fatal(err)
	}
	if !r.Holds(rec.Proto()) {
		t.Fatal("does not hold the announced record")
	}
	other := proto.Clone(rec.Proto()).(*protocolpb.Announcement)
	other.Signature = append([]byte(nil), other.Signature...)
	other.Signature[0] ^= 1
	if r.Holds(other) || r.Holds(f.record(t, 0, 6, t0).Proto()) || r.Holds(nil) {
		t.Fatal("holds a different record")
	}
}

// A new record that carries the credential already held skips the
// credential's signature check, but not its revocation or expiry.
func TestHeldCredentialIsRechecked(t *testing.T) {
	t.Parallel()
	f := newFx(t, 1)
	r := f.registry()
	if _, err := r.Announce(f.record(t, 0, 1, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Announce(f.record(t, 0, 2, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	rev, _ := trust.RevokeAgent(f.anchor, f.agents[0].Public(), t0, t0, time.Hour)
	if err := f.v.AddRevocation(rev, t0); err != nil {
		t.Fatal(err)
	}
	_, err := r.Announce(f.record(t, 0, 3, t0), Direct, t0)
	want(t, err, trust.CodeRevoked)

	g := newFx(t, 1)
	r = g.registry()
	if _, err := r.Announce(g.record(t, 0, 1, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	later := t0.Add(30 * time.Hour)
	_, err = r.Announce(g.record(t, 0, 2, later), Direct, later)
	want(t, err, trust.CodeExpired)
}

// A node that was paused excuses the silence that fell in its pause: an
// agent heard just before it is not declared dead when the node resumes,
// but one silent for longer than the timeout before the pause still is.
func TestExcuseOwnPause(t *testing.T) {
	t.Parallel()
	f := newFx(t, 2)
	r := f.registry()
	quiet, heard := f.agents[0].Public(), f.agents[1].Public()
	for i := range 2 {
		if _, err := r.Announce(f.record(t, i, 10, t0), Direct, t0); err != nil {
			t.Fatal(err)
		}
	}
	paused := t0.Add(3*hb + 10*time.Millisecond)
	if _, err := r.Heartbeat(heard, 11, paused, paused); err != nil {
		t.Fatal(err)
	}
	resumed := paused.Add(5 * hb)
	r.Excuse(5*hb, resumed)
	evs := r.Tick(resumed)
	if len(evs) != 1 || evs[0].Agent != quiet || evs[0].To != Dead {
		t.Fatalf("after the pause: %+v", evs)
	}
	want(t, r.Admit(heard, resumed), "")
	// The excuse is spent: the silence after the pause counts.
	if evs := r.Tick(resumed.Add(3*hb + time.Millisecond)); len(evs) != 1 || evs[0].Agent != heard || evs[0].To != Dead {
		t.Fatalf("after the pause and a timeout: %+v", evs)
	}
	// An excuse never puts a sign of life in the future.
	r.Excuse(time.Hour, resumed)
	if _, err := r.Heartbeat(heard, 12, resumed, resumed); err != nil {
		t.Fatal(err)
	}
	r.Excuse(time.Hour, resumed)
	for _, e := range r.Entries() {
		if e.LastHeartbeat.After(resumed) {
			t.Fatalf("%s heard in the future: %s", e.Name, e.LastHeartbeat)
		}
	}
}
