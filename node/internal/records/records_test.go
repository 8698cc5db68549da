package records_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/records"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// hb is long enough that no record token refills while a test runs.
const hb = time.Hour

type fx struct {
	anchor, other *trust.AnchorKey
	v             *trust.Verifier
	self          *trust.Identity
	agents        []*trust.Identity
	creds         []*trust.Credential
	reg           *discovery.Registry
	bad           *refused.Cache
	in            *records.Intake
	learned       []*discovery.Record
	learnErr      error
	left          []bool // the news flag of each Left call
}

func key(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

// newFx builds an intake over a registry of n agents' identities, none
// listed yet; allow, when set, is the registry's allowlist (by index).
func newFx(t testing.TB, n int, allow ...int) *fx {
	t.Helper()
	f := &fx{bad: refused.New()}
	f.anchor, _ = trust.GenerateAnchorKey(key(1))
	f.other, _ = trust.GenerateAnchorKey(key(3))
	var err error
	if f.v, err = trust.NewVerifier(trust.DefaultPolicy(f.anchor.Public())); err != nil {
		t.Fatal(err)
	}
	f.self, _ = trust.GenerateIdentity(key(2))
	for i := range n {
		id, _ := trust.GenerateIdentity(key(byte(10 + i)))
		c, err := trust.IssueCredential(f.anchor, id.Public(), "agent-"+string(rune('a'+i)), t0.Add(-time.Hour), 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f.agents, f.creds = append(f.agents, id), append(f.creds, c)
	}
	var list []trust.PublicKey
	for _, i := range allow {
		list = append(list, f.agents[i].Public())
	}
	f.reg = discovery.NewRegistry(discovery.Config{Verifier: f.v, Self: f.self.Public(), DeadAfter: 3 * hb, Allowlist: list})
	f.in = records.New(records.Deps{Registry: f.reg, Verifier: f.v, Refused: f.bad,
		Clock: func() time.Time { return t0 }, HeartbeatInterval: hb,
		Learn: func(rec *discovery.Record, src discovery.Source) error {
			f.learned = append(f.learned, rec)
			if f.learnErr != nil {
				return f.learnErr
			}
			_, err := f.reg.Announce(rec, src, t0)
			return err
		},
		Left: func(_ []discovery.Event, news bool, _ *protocolpb.Leave) { f.left = append(f.left, news) },
	})
	return f
}

// wire returns agent i's record with cred at seq, as a peer would send it
// (a copy: the record's own slices must not be modified).
func (f *fx) wire(t testing.TB, i int, cred *trust.Credential, seq uint64) *protocolpb.Announcement {
	t.Helper()
	r, err := discovery.NewRecord(f.agents[i], cred, []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/4001")}, seq, hb, t0)
	if err != nil {
		t.Fatal(err)
	}
	return proto.Clone(r.Proto()).(*protocolpb.Announcement)
}

func (f *fx) record(t testing.TB, i int, seq uint64) *protocolpb.Announcement {
	return f.wire(t, i, f.creds[i], seq)
}

// broken returns a with its signature's first byte flipped.
func broken(a *protocolpb.Announcement) *protocolpb.Announcement {
	b := proto.Clone(a).(*protocolpb.Announcement)
	b.Signature[0] ^= 1
	return b
}

// list enters agent i's record at seq in the registry, as the node would.
func (f *fx) list(t testing.TB, i int, seq uint64) {
	t.Helper()
	if err := f.in.Apply(f.record(t, i, seq), discovery.Direct, trust.PublicKey{}); err != nil {
		t.Fatalf("listing agent %d: %v", i, err)
	}
}

func wantCode(t *testing.T, err error, code trust.Code) {
	t.Helper()
	if trust.CodeOf(err) != code {
		t.Fatalf("want code %q, got %v", code, err)
	}
}

// A record the registry holds already is nothing new: Check returns
// nothing, and Apply does not reach Learn.
func TestHeldRecordCostsNothing(t *testing.T) {
	f := newFx(t, 1)
	f.list(t, 0, 5)
	a := proto.Clone(f.reg.Record(f.agents[0].Public()).Proto()).(*protocolpb.Announcement)
	rec, k, err := f.in.Check(a, trust.PublicKey{})
	if rec != nil || err != nil || k != ([32]byte{}) {
		t.Fatalf("held record: got %v, %x, %v; want nothing", rec, k, err)
	}
	if err := f.in.Apply(a, discovery.Relayed, trust.PublicKey{}); err != nil || len(f.learned) != 1 {
		t.Fatalf("held record applied: err %v, learned %d times (want once, at listing)", err, len(f.learned))
	}
}

// The same refused bytes are refused again from the cache: the second
// refusal is the very *trust.Error of the first, which ParseRecord (a new
// error per call) cannot return, so no signature was checked.
func TestRefusedBytesCostAHash(t *testing.T) {
	f := newFx(t, 1)
	a := broken(f.record(t, 0, 1))
	_, k1, err1 := f.in.Check(a, trust.PublicKey{})
	wantCode(t, err1, trust.CodeBadSignature)
	_, k2, err2 := f.in.Check(proto.Clone(a).(*protocolpb.Announcement), trust.PublicKey{})
	if err2 != err1 || k1 != k2 {
		t.Fatalf("second refusal %p (%v) is not the cached %p", err2, err2, err1)
	}
	// Other bytes (the intact record) are not taken for the refused ones.
	if rec, _, err := f.in.Check(f.record(t, 0, 1), trust.PublicKey{}); err != nil || rec == nil {
		t.Fatalf("intact record: %v", err)
	}
	// The same bytes from another author are another key.
	if _, k3, _ := f.in.Check(a, f.agents[0].Public()); k3 == k1 {
		t.Fatal("the author is not part of the refusal key")
	}
}

// A verdict that may turn into acceptance is not cached: each Check of
// the same bytes returns a new error.
func TestTransientRefusalNotCached(t *testing.T) {
	f := newFx(t, 2, 1) // only agent 1 is allowed
	a := f.record(t, 0, 1)
	_, _, err1 := f.in.Check(a, trust.PublicKey{})
	wantCode(t, err1, protocol.CodeUnlisted)
	_, _, err2 := f.in.Check(a, trust.PublicKey{})
	wantCode(t, err2, protocol.CodeUnlisted)
	if err1 == err2 {
		t.Fatal("an unlisted refusal came from the cache")
	}
}

// What the node's own configuration refuses (allowlist, anchor, lifetime)
// is refused before the signature: records with a broken signature get
// that code, not bad_signature.
func TestConfigRefusedBeforeSignature(t *testing.T) {
	f := newFx(t, 2, 0) // agent 1 is off the allowlist
	foreign, err := trust.IssueCredential(f.other, f.agents[0].Public(), "agent-a", t0.Add(-time.Hour), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	long, err := trust.IssueCredential(f.anchor, f.agents[0].Public(), "agent-a", t0.Add(-time.Hour), 8*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		a    *protocolpb.Announcement
		want trust.Code
	}{
		{"off the allowlist", broken(f.record(t, 1, 1)), protocol.CodeUnlisted},
		{"untrusted anchor", broken(f.wire(t, 0, foreign, 1)), trust.CodeUntrustedRoot},
		{"lifetime past the policy", broken(f.wire(t, 0, long, 1)), trust.CodeLifetime},
		{"allowed, trusted, short", broken(f.record(t, 0, 1)), trust.CodeBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.in.Check(tc.a, trust.PublicKey{})
			wantCode(t, err, tc.want)
		})
	}
}

// A record published by someone other than its agent is impersonation,
// and that verdict is final (cached).
func TestAuthorMustBeAgent(t *testing.T) {
	f := newFx(t, 2)
	a := f.record(t, 0, 1)
	_, _, err1 := f.in.Check(a, f.agents[1].Public())
	wantCode(t, err1, protocol.CodeImpersonation)
	if _, _, err2 := f.in.Check(a, f.agents[1].Public()); err2 != err1 {
		t.Fatalf("impersonation not cached: %v", err2)
	}
	if rec, _, err := f.in.Check(a, f.agents[0].Public()); err != nil || rec == nil {
		t.Fatalf("own record refused: %v", err)
	}
}

// A listed agent's new records pass RecordBurst at once; the next is
// refused flood before its signature, and that is not cached. Old records
// and other agents are not charged.
func TestListedAgentRecordRate(t *testing.T) {
	f := newFx(t, 2)
	f.list(t, 0, 10)
	for i := range records.RecordBurst {
		if _, _, err := f.in.Check(f.record(t, 0, uint64(11+i)), trust.PublicKey{}); err != nil {
			t.Fatalf("new record %d of the burst: %v", i, err)
		}
	}
	next := broken(f.record(t, 0, 20))
	_, _, err1 := f.in.Check(next, trust.PublicKey{})
	wantCode(t, err1, protocol.CodeFlood)
	_, _, err2 := f.in.Check(next, trust.PublicKey{})
	wantCode(t, err2, protocol.CodeFlood)
	if err1 == err2 {
		t.Fatal("a flood refusal was cached: it would outlive the rate")
	}
	// An old record (seq not above the registry's) is not charged.
	if _, _, err := f.in.Check(broken(f.record(t, 0, 9)), trust.PublicKey{}); trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("old record: want bad_signature, got %v", err)
	}
	// Another agent's join is not charged, however many.
	for i := range records.RecordBurst + 2 {
		if _, _, err := f.in.Check(f.record(t, 1, uint64(1+i)), trust.PublicKey{}); err != nil {
			t.Fatalf("join record %d: %v", i, err)
		}
	}
}

// Apply enters a checked record through Learn, and a final refusal by
// Learn is remembered for the bytes; a transient one is not.
func TestApplyRemembersLearnRefusal(t *testing.T) {
	f := newFx(t, 1)
	final := &trust.Error{Code: protocol.CodeReplay, Link: -1, Detail: "test"}
	transient := &trust.Error{Code: protocol.CodeStale, Link: -1, Detail: "test"}

	f.learnErr = transient
	a := f.record(t, 0, 1)
	if err := f.in.Apply(a, discovery.Direct, trust.PublicKey{}); err != transient {
		t.Fatalf("want Learn's error, got %v", err)
	}
	f.learnErr = final
	if err := f.in.Apply(a, discovery.Direct, trust.PublicKey{}); err != final {
		t.Fatalf("transient refusal was cached: got %v", err)
	}
	f.learnErr = nil
	if _, _, err := f.in.Check(a, trust.PublicKey{}); err != final {
		t.Fatalf("Learn's final refusal not remembered: got %v", err)
	}
	if len(f.learned) != 2 {
		t.Fatalf("Learn called %d times, want 2", len(f.learned))
	}
	// A non-trust error is passed on and not remembered.
	f.learnErr = errors.New("disk full")
	b := f.record(t, 0, 2)
	if err := f.in.Apply(b, discovery.Direct, trust.PublicKey{}); err != f.learnErr {
		t.Fatalf("want Learn's error, got %v", err)
	}
	f.learnErr = nil
	if err := f.in.Apply(b, discovery.Direct, trust.PublicKey{}); err != nil {
		t.Fatalf("after a plain error: %v", err)
	}
}

// ApplyLeave refuses a leave of an unlisted agent, or one not newer than
// the agent's sequence number, before its signature; applies a good one
// once (news), and hands Left the news flag.
func TestApplyLeave(t *testing.T) {
	f := newFx(t, 2)
	f.list(t, 0, 10)
	leave := func(i int, seq uint64, ok bool) *protocolpb.Leave {
		l := discovery.SignLeave(f.agents[i], seq, t0)
		if !ok {
			l.Signature[0] ^= 1
		}
		return l
	}
	for _, tc := range []struct {
		name string
		l    *protocolpb.Leave
		want trust.Code
	}{
		{"malformed agent", &protocolpb.Leave{Agent: []byte{1, 2}, Seq: 11}, trust.CodeMalformed},
		{"unlisted, broken signature", leave(1, 11, false), protocol.CodeUnlisted},
		{"old seq, broken signature", leave(0, 10, false), protocol.CodeReplay},
		{"new seq, broken signature", leave(0, 11, false), trust.CodeBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			news, err := f.in.ApplyLeave(tc.l)
			wantCode(t, err, tc.want)
			if news {
				t.Fatal("a refused leave was news")
			}
		})
	}
	if len(f.left) != 0 {
		t.Fatalf("Left called for refused leaves: %v", f.left)
	}
	good := leave(0, 11, true)
	if news, err := f.in.ApplyLeave(good); err != nil || !news {
		t.Fatalf("good leave: news %v, err %v", news, err)
	}
	if st := f.reg.State(f.agents[0].Public()); st != discovery.Dead {
		t.Fatalf("after leave: state %v, want dead", st)
	}
	if _, err := f.in.ApplyLeave(good); trust.CodeOf(err) != protocol.CodeReplay {
		t.Fatalf("same leave again: want replay, got %v", err)
	}
	// A newer leave of an agent already dead changes nothing: not news.
	if news, err := f.in.ApplyLeave(leave(0, 12, true)); err != nil || news {
		t.Fatalf("second leave: news %v, err %v", news, err)
	}
	if want := []bool{true, false}; len(f.left) != 2 || f.left[0] != want[0] || f.left[1] != want[1] {
		t.Fatalf("Left news flags %v, want %v", f.left, want)
	}
}
