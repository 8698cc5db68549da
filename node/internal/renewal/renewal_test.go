package renewal

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// hb is long enough that no renewal token refills while a test runs.
const hb = time.Hour

func key(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

type fx struct {
	anchor, other *trust.AnchorKey
	v             *trust.Verifier
	reg           *discovery.Registry
	self, agent   *trust.Identity
	cred          *trust.Credential // self's, by anchor, from t0 for a day
	now           time.Time
}

func newFx(t testing.TB) *fx {
	t.Helper()
	f := &fx{now: t0}
	f.anchor, _ = trust.GenerateAnchorKey(key(1))
	f.other, _ = trust.GenerateAnchorKey(key(2))
	var err error
	if f.v, err = trust.NewVerifier(trust.DefaultPolicy(f.anchor.Public(), f.other.Public())); err != nil {
		t.Fatal(err)
	}
	f.self, _ = trust.GenerateIdentity(key(3))
	f.agent, _ = trust.GenerateIdentity(key(4))
	f.reg = discovery.NewRegistry(discovery.Config{Verifier: f.v, Self: f.self.Public(), DeadAfter: 3 * hb})
	if f.cred, err = trust.IssueCredential(f.anchor, f.self.Public(), "self", t0, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fx) renewer(issuer *trust.AnchorKey, renewAfter float64, renewed func(*trust.Credential)) *Renewer {
	return New(Deps{Self: f.self.Public(), Issuer: issuer, Verifier: f.v, Registry: f.reg, Clock: func() time.Time { return f.now },
		Logger: slog.New(slog.DiscardHandler), Timeout: time.Second, HeartbeatInterval: hb, RenewAfter: renewAfter,
		Credential: func() *trust.Credential { return f.cred }, Renewed: renewed})
}

// Status puts the renew-at time at RenewAfter of the lifetime, warns
// "overdue" only past both it and half-life, and "expired" from Expires on.
func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		name       string
		renewAfter float64
		at         time.Duration // after NotBefore
		renewAt    time.Duration
		left       string
		warning    string // a prefix; "" for none
	}{
		{"fresh", 2.0 / 3, time.Hour, 16 * time.Hour, "23h0m0s", ""},
		{"at renew-at", 2.0 / 3, 16 * time.Hour, 16 * time.Hour, "8h0m0s", ""},
		{"past renew-at", 2.0 / 3, 16*time.Hour + time.Second, 16 * time.Hour, "7h59m59s", "credential renewal overdue: 7h59m59s left"},
		{"early renew-at, before half-life", 0.25, 11 * time.Hour, 6 * time.Hour, "13h0m0s", ""},
		{"early renew-at, at half-life", 0.25, 12 * time.Hour, 6 * time.Hour, "12h0m0s", ""},
		{"early renew-at, past half-life", 0.25, 12*time.Hour + time.Second, 6 * time.Hour, "11h59m59s", "credential renewal overdue"},
		{"a second before expiry", 2.0 / 3, 24*time.Hour - time.Second, 16 * time.Hour, "1s", "credential renewal overdue"},
		{"at expiry", 2.0 / 3, 24 * time.Hour, 16 * time.Hour, "0s", "credential expired"},
		{"past expiry", 2.0 / 3, 25 * time.Hour, 16 * time.Hour, "-1h0m0s", "credential expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFx(t)
			f.now = t0.Add(tc.at)
			st := f.renewer(nil, tc.renewAfter, nil).Status()
			if !st.Expires.Equal(t0.Add(24*time.Hour)) || st.Expires.Location() != time.UTC {
				t.Errorf("Expires %s", st.Expires)
			}
			if !st.RenewAt.Equal(t0.Add(tc.renewAt)) || st.RenewAt.Location() != time.UTC {
				t.Errorf("RenewAt %s, want %s", st.RenewAt, t0.Add(tc.renewAt))
			}
			if st.TimeLeft != tc.left {
				t.Errorf("TimeLeft %q, want %q", st.TimeLeft, tc.left)
			}
			if (tc.warning == "") != (st.Warning == "") || !strings.HasPrefix(st.Warning, tc.warning) {
				t.Errorf("Warning %q, want %q", st.Warning, tc.warning)
			}
		})
	}
}

// An issuer of its own anchor renews itself once RenewAfter has passed,
// and not before: same subject, name and lifetime, starting now.
func TestMaybeRenewSelf(t *testing.T) {
	f := newFx(t)
	got := make(chan *trust.Credential, 1)
	r := f.renewer(f.anchor, 2.0/3, func(c *trust.Credential) { got <- c })

	f.now = t0.Add(16*time.Hour - time.Second)
	r.MaybeRenew(context.Background())
	if r.renewing.Load() {
		t.Fatal("a renewal started before renew-at")
	}
	f.now = t0.Add(16 * time.Hour)
	r.MaybeRenew(context.Background())
	c := <-got
	if !c.Subject.Equal(f.self.Public()) || c.Name != "self" || !c.Issuer.Equal(f.anchor.Public()) ||
		!c.NotBefore.Equal(f.now) || c.Expires.Sub(c.NotBefore) != 24*time.Hour || c.Serial == f.cred.Serial {
		t.Fatalf("renewed credential %+v", c.Info())
	}
	if err := f.v.VerifyCredential(c, f.now); err != nil {
		t.Fatal(err)
	}
}

// renewFor renews only a valid credential of this issuer's anchor,
// presented by its subject, who is not dead, once a heartbeat.
func TestRenewFor(t *testing.T) {
	f := newFx(t)
	agent := f.agent.Public()
	own, _ := trust.IssueCredential(f.anchor, agent, "agent", t0.Add(-time.Hour), 24*time.Hour)
	foreign, _ := trust.IssueCredential(f.other, agent, "agent", t0.Add(-time.Hour), 24*time.Hour)
	expired, _ := trust.IssueCredential(f.anchor, agent, "agent", t0.Add(-25*time.Hour), 24*time.Hour)
	others, _ := trust.IssueCredential(f.anchor, f.self.Public(), "self", t0.Add(-time.Hour), 24*time.Hour)
	req := func(c *trust.Credential) []byte {
		b, _ := proto.Marshal(&protocolpb.RenewRequest{Credential: c.Proto()})
		return b
	}
	for _, tc := range []struct {
		name   string
		issuer *trust.AnchorKey
		raw    []byte
		dead   bool
		want   trust.Code
	}{
		{"not an issuer", nil, req(own), false, protocol.CodeUnavailable},
		{"garbage", f.anchor, []byte{0xff, 0xff}, false, trust.CodeMalformed},
		{"no credential", f.anchor, nil, false, trust.CodeMalformed},
		{"another's credential", f.anchor, req(others), false, protocol.CodeImpersonation},
		{"another anchor's credential", f.anchor, req(foreign), false, trust.CodeUntrustedRoot},
		{"expired", f.anchor, req(expired), false, trust.CodeExpired},
		{"dead", f.anchor, req(own), true, protocol.CodeDead},
		{"good", f.anchor, req(own), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.dead { // a registry of its own, where the agent left
				f := newFx(t)
				rec, err := discovery.NewRecord(f.agent, own, []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/1")}, 1, hb, t0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.reg.Announce(rec, discovery.Direct, t0); err != nil {
					t.Fatal(err)
				}
				if _, err := f.reg.Leave(agent, 2, t0); err != nil {
					t.Fatal(err)
				}
				_, err = f.renewer(tc.issuer, 2.0/3, nil).renewFor(agent.PeerID(), tc.raw)
				if trust.CodeOf(err) != tc.want {
					t.Fatalf("want %q, got %v", tc.want, err)
				}
				return
			}
			c, err := f.renewer(tc.issuer, 2.0/3, nil).renewFor(agent.PeerID(), tc.raw)
			if trust.CodeOf(err) != tc.want || (err == nil) != (tc.want == "") {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
			if err == nil && (!c.Subject.Equal(agent) || c.Name != "agent" || !c.NotBefore.Equal(t0) ||
				c.Expires.Sub(c.NotBefore) != 24*time.Hour || !c.Issuer.Equal(f.anchor.Public())) {
				t.Fatalf("renewed credential %+v", c.Info())
			}
		})
	}
}

// A second renewal of the same agent within a heartbeat is refused flood,
// before its credential is checked; another agent is not charged.
func TestRenewForRate(t *testing.T) {
	f := newFx(t)
	r := f.renewer(f.anchor, 2.0/3, nil)
	raw := func(id *trust.Identity) []byte {
		c, _ := trust.IssueCredential(f.anchor, id.Public(), "agent", t0.Add(-time.Hour), 24*time.Hour)
		b, _ := proto.Marshal(&protocolpb.RenewRequest{Credential: c.Proto()})
		return b
	}
	p := f.agent.Public().PeerID()
	if _, err := r.renewFor(p, raw(f.agent)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.renewFor(p, raw(f.agent)); trust.CodeOf(err) != protocol.CodeFlood {
		t.Fatalf("second renewal: want flood, got %v", err)
	}
	other, _ := trust.GenerateIdentity(key(9))
	if _, err := r.renewFor(other.Public().PeerID(), raw(other)); err != nil {
		t.Fatalf("another agent charged: %v", err)
	}
}
