//go:build meshsim

package simulations

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
	"github.com/meshagent/meshagent/wire"
)

// Attack is one row of the threat model played as a sustained flood: the
// attacker repeats it from 4 goroutines for as long as the measurement
// lasts, and the target must reject every attempt with Code.
type Attack struct {
	Name string
	Code trust.Code // "" for the mixed flood, whose attempts have several
	What string
}

// Attacks is every row of the threat model that one attacker can play
// against one target on its own. (A dead agent speaking is played by
// TestThreatModelInAMeshOfTwenty: it needs the mesh to declare the
// attacker dead first.)
var Attacks = []Attack{
	{"forgery", trust.CodeBadSignature, "a request whose signature does not verify"},
	{"tampering", trust.CodeBadSignature, "a signed request with its body altered"},
	{"impersonation", protocol.CodeImpersonation, "an honest agent's request sent by the attacker"},
	{"replay", protocol.CodeReplay, "the attacker's own accepted request, sent again"},
	{"misdirected", protocol.CodeWrongRecipient, "an honest request to another node, sent to the target"},
	{"escalation", trust.CodeEscalation, "a chain that grants read:logs from a read:metrics token"},
	{"widened", trust.CodeEscalation, "a delegation outliving its parent"},
	{"wildcard", trust.CodeWildcard, "a delegation with a wildcard scope"},
	{"stolen-token", trust.CodeNotHolder, "an honest agent's token used by the attacker"},
	{"expired", trust.CodeExpired, "an expired token"},
	{"not-yet-valid", trust.CodeNotYetValid, "a token valid from tomorrow"},
	{"revoked", trust.CodeRevoked, "a revoked token"},
	{"untrusted-root", trust.CodeUntrustedRoot, "a token from an anchor the mesh does not trust"},
	{"stale", protocol.CodeStale, "a request sealed 6 minutes ago"},
	{"garbage", trust.CodeMalformed, "frames that are not envelopes"},
	{"oversized", trust.CodeTooLarge, "frames above the size limit"},
	{"outsider", trust.CodeUntrustedRoot, "connections from an agent whose credential the mesh's anchor did not issue"},
	{"mixed", "", "forged, re-sent, stolen-token, escalated and garbage requests in turn"},
}

// AttackNamed returns the attack called name.
func AttackNamed(name string) (Attack, bool) {
	for _, a := range Attacks {
		if a.Name == name {
			return a, true
		}
	}
	return Attack{}, false
}

// kit is what an attacker holds: its node and key, the target, and the
// material the scenario gave it.
type kit struct {
	n    *node.Node
	id   *trust.Identity
	tid  peer.ID
	addr peer.AddrInfo // the target's address, for the outsider's redials
	skew *atomic.Int64 // the offset of n's clock (its Config.Clock must read it: "stale" needs it)

	own, stolen, delegated, expired, notYet, revoked *trust.Token
	replayed, misdirected                            []byte

	// For the resource attacks (resource_attacks.go): the attacker's credential,
	// for the insider host they admit by hand; whether the attack is on
	// and when it ends (run sets both), for what they hold to be let go;
	// and the attempts that got past the attacker's own dial, open or
	// write.
	cred   *trust.Credential
	on     *atomic.Bool
	stop   <-chan struct{}
	landed atomic.Int64
}

// seal builds a request to the target with tok, failing loudly: a scenario
// whose attack cannot be built must not report a clean run.
func (k *kit) seal(action string, body []byte, tok *trust.Token) ([]byte, error) {
	raw, err := k.n.SealRequest(k.tid, action, body, tok)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return raw, nil
}

// attempt returns the function that makes one attempt of attack a. Frames
// are built once and re-sent: every one is rejected before its nonce is
// recorded, so the same bytes cost the target the same checks each time,
// and the attacker spends its CPU on sending, not on signing.
func (k *kit) attempt(ctx context.Context, a string) (func(), error) {
	send := func(raw []byte) func() { return func() { _, _ = k.n.SendRaw(ctx, k.tid, raw) } }
	sealWith := func(tok *trust.Token) (func(), error) {
		if tok == nil {
			return nil, fmt.Errorf("%s: no token given", a)
		}
		raw, err := k.seal("read:logs", nil, tok)
		if err != nil {
			return nil, err
		}
		return send(raw), nil
	}
	now := time.Now()
	switch a {
	case "forgery":
		raw, err := k.seal("read:logs", nil, k.stolen)
		if err != nil {
			return nil, err
		}
		raw[len(raw)-1] ^= 1
		return send(raw), nil
	case "tampering":
		raw, err := k.seal("read:logs", []byte("aaaa"), k.own)
		if err != nil {
			return nil, err
		}
		raw[strings.Index(string(raw), "aaaa")] = 'b'
		return send(raw), nil
	case "impersonation":
		return send(k.replayed), nil
	case "replay":
		raw, err := k.seal("read:metrics", nil, k.own)
		if err != nil {
			return nil, err
		}
		if _, err := k.n.SendRaw(ctx, k.tid, raw); trust.CodeOf(err) != protocol.CodeNoHandler {
			return nil, fmt.Errorf("replay: the first send was not accepted: %v", err)
		}
		return send(raw), nil
	case "misdirected":
		return send(k.misdirected), nil
	case "escalation":
		return sealWith(trusttest.ForgeDelegation(k.own, k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now))
	case "widened":
		if k.delegated == nil {
			return nil, fmt.Errorf("widened: no delegation given")
		}
		return sealWith(trusttest.ForgeDelegation(k.delegated, k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(48 * time.Hour)}, now))
	case "wildcard":
		if k.delegated == nil {
			return nil, fmt.Errorf("wildcard: no delegation given")
		}
		return sealWith(trusttest.ForgeDelegation(k.delegated, k.id, k.id.Public(), trust.Grant{Scopes: []string{"read:*"}, Expires: now.Add(time.Hour)}, now))
	case "stolen-token":
		return sealWith(k.stolen)
	case "expired":
		return sealWith(k.expired)
	case "not-yet-valid":
		return sealWith(k.notYet)
	case "revoked":
		return sealWith(k.revoked)
	case "untrusted-root":
		rogue, err := trust.GenerateAnchorKey(nil)
		if err != nil {
			return nil, err
		}
		tok, err := trust.IssueToken(rogue, k.id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
		if err != nil {
			return nil, err
		}
		return sealWith(tok)
	case "stale":
		k.skew.Store(int64(-6 * time.Minute))
		raw, err := k.seal("read:logs", nil, k.own)
		k.skew.Store(0)
		if err != nil {
			return nil, err
		}
		return send(raw), nil
	case "garbage", "oversized":
		frame := []byte("garbage")
		if a == "oversized" {
			frame = make([]byte, protocol.DefaultMaxEnvelopeSize+1)
		}
		return func() {
			if s, err := k.n.Host().NewStream(ctx, k.tid, wire.ProtocolRPC); err == nil {
				_ = msgio.NewVarintWriter(s).WriteMsg(frame)
				_ = s.Reset()
			}
		}, nil
	case "outsider":
		return func() {
			h := k.n.Host()
			_ = h.Network().ClosePeer(k.tid)
			_ = k.n.Join(network.WithForceDirectDial(ctx, "outsider"), k.addr)
		}, nil
	case "mixed":
		var steps []func()
		for _, b := range []string{"forgery", "impersonation", "stolen-token", "escalation", "garbage"} {
			f, err := k.attempt(ctx, b)
			if err != nil {
				return nil, err
			}
			steps = append(steps, f)
		}
		var i atomic.Uint64
		return func() { steps[i.Add(1)%uint64(len(steps))]() }, nil
	}
	return k.resourceAttempt(ctx, a)
}

// run makes attempts of attack a from 4 goroutines while on is set, until
// stop closes, counting them.
func (k *kit) run(ctx context.Context, a string, on *atomic.Bool, stop <-chan struct{}, attempts *atomic.Int64) error {
	k.on, k.stop = on, stop
	f, err := k.attempt(ctx, a)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !on.Load() {
					time.Sleep(time.Millisecond) // paused
					continue
				}
				attempts.Add(1)
				f()
			}
		}()
	}
	wg.Wait()
	return nil
}

// AttackResult compares honest traffic with and without one attack.
type AttackResult struct {
	N               int
	Attack          Attack
	Baseline, Under LoadResult
	Attempts        int64 // attempts the attacker made
	Rejected        int64 // of which the target audited as rejected (requests and admissions)
	WithCode        int64 // of those, rejections with the attack's code
	CutOff          bool  // the target refused the attacker for flooding
	Throttled       bool  // the target refused its requests unchecked for a while
	HandlerRuns     int64 // honest handler runs caused by the attacker: must be 0
}

// Ratio is honest throughput under the attack over throughput without it.
func (r AttackResult) Ratio() float64 { return r.Under.PerSecond() / r.Baseline.PerSecond() }

// AttackScenario starts n honest agents and an enrolled attacker, measures
// honest calls to one target for d, then again for d while the attacker
// floods the same target with the mixed attack (forged, re-sent,
// stolen-token, escalated and garbage requests) from 4 goroutines. The
// attacker runs in the same process: its own work shares the CPU with the
// honest agents. SeparateAttacks runs each attack from a process of its
// own.
func AttackScenario(ctx context.Context, n int, d time.Duration) (AttackResult, error) {
	mixed, _ := AttackNamed("mixed")
	res := AttackResult{N: n, Attack: mixed}
	var mal *Agent
	st, err := newAttackStage(ctx, n, func(m *Mesh) (err error) {
		opts := Options{HeartbeatInterval: 500 * time.Millisecond, DeadAfter: 5 * time.Second}
		mal, err = m.Add(ctx, "mallory", true, opts)
		return err
	})
	if err != nil {
		return res, err
	}
	defer st.m.Close()
	if err := st.m.Connect(ctx, "mallory", st.target); err != nil {
		return res, err
	}
	if err := WaitFor(30*time.Second, func() error { return st.m.Converged("alive") }); err != nil {
		return res, err
	}
	k := &kit{n: mal.Node, id: mal.Identity, tid: st.tid(), skew: new(atomic.Int64)}
	if err := st.arm(ctx, k); err != nil {
		return res, err
	}
	res.Baseline = st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", d)
	stop := make(chan struct{})
	var attempts atomic.Int64
	done := make(chan error, 1)
	var on atomic.Bool
	on.Store(true)
	go func() { done <- k.run(ctx, mixed.Name, &on, stop, &attempts) }()
	res.Under = st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", d)
	close(stop)
	if err := <-done; err != nil {
		return res, err
	}
	res.Attempts = attempts.Load()
	st.tally(&res, mal.ID())
	return res, nil
}

// attackStage is what both attack scenarios share: n honest agents (a ring
// plus one chord each, seed 3, replay window 10 s), a target serving read:logs that counts its
// runs for anyone but the honest agents, and four callers holding
// delegatable read:logs tokens.
type attackStage struct {
	m       *Mesh
	target  string
	callers []string
	stolen  *trust.Token // a caller's token, for the attacker to use
	foreign atomic.Int64 // target handler runs for a sender that is not honest
}

// newAttackStage builds the stage; enrol, when set, adds the attacker to
// the mesh before it is wired.
func newAttackStage(ctx context.Context, n int, enrol func(m *Mesh) error) (*attackStage, error) {
	// A 10 s replay window: the callers' back-to-back load (thousands of
	// calls a second, for minutes in SeparateAttacks) would otherwise fill
	// the target's replay cache, sized for about 870 accepted envelopes a
	// second at the default 5-minute window, and the target would refuse
	// honest calls for that, not for the attack.
	m, err := NewMesh(ctx, AgentNames(n), Options{HeartbeatInterval: 500 * time.Millisecond, DeadAfter: 5 * time.Second,
		Configure: func(_ string, c *node.Config) { c.ReplayWindow = 10 * time.Second }})
	if err != nil {
		return nil, err
	}
	st := &attackStage{m: m, target: m.Names()[0], callers: m.Names()[1:5]}
	honest := map[peer.ID]bool{}
	for _, a := range m.Agents {
		honest[a.ID()] = true
	}
	if enrol != nil {
		if err := enrol(m); err != nil {
			m.Close()
			return nil, err
		}
	}
	if err := m.ConnectSparse(ctx, 1, 3); err != nil {
		m.Close()
		return nil, err
	}
	_ = m.Agents[st.target].Node.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		if !honest[r.From] {
			st.foreign.Add(1)
		}
		return []byte("ok"), nil
	})
	for _, c := range st.callers {
		if st.stolen, err = m.Grant(c, []string{"read:logs"}, []string{"read:logs"}, time.Hour); err != nil {
			m.Close()
			return nil, err
		}
	}
	return st, nil
}

func (st *attackStage) tid() peer.ID { return st.m.Agents[st.target].ID() }

// arm gives the attacker k (its id and target set) the material of every
// attack: its own read:metrics token; an honest caller's token; a
// delegation from that caller, to forge on; expired, not-yet-valid and
// revoked tokens (the revocation reached the target); an honest caller's
// request to the target and one to another node.
func (st *attackStage) arm(ctx context.Context, k *kit) error {
	m, now, mal := st.m, time.Now(), k.id.Public()
	issue := func(from, until time.Time) (*trust.Token, error) {
		return trust.IssueToken(m.Anchor, mal, trust.Grant{Scopes: []string{"read:logs"}, NotBefore: from, Expires: until}, now)
	}
	var err error
	if k.own, err = trust.IssueToken(m.Anchor, mal, trust.Grant{Scopes: []string{"read:metrics"}, NotBefore: now.Add(-time.Minute), Expires: now.Add(time.Hour)}, now); err != nil {
		return err
	}
	if k.n != nil {
		k.n.AddToken(k.own)
	}
	k.stolen = st.stolen
	holder := m.Agents[st.callers[len(st.callers)-1]]
	if k.delegated, err = st.stolen.Delegate(holder.Identity, mal, trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now); err != nil {
		return err
	}
	if k.expired, err = issue(now.Add(-2*time.Hour), now.Add(-time.Hour)); err != nil {
		return err
	}
	if k.notYet, err = issue(now.Add(time.Hour), now.Add(2*time.Hour)); err != nil {
		return err
	}
	if k.revoked, err = issue(now.Add(-time.Minute), now.Add(time.Hour)); err != nil {
		return err
	}
	rev, err := trust.RevokeLink(m.Anchor, k.revoked.Links[0].ID, now, time.Hour)
	if err != nil {
		return err
	}
	target := m.Agents[st.target].Node
	before := target.Verifier().Revocations()
	if err := target.Revoke(ctx, rev.Bytes()); err != nil {
		return err
	}
	if err := WaitFor(10*time.Second, func() error {
		if target.Verifier().Revocations() == before {
			return fmt.Errorf("revocation not applied at the target")
		}
		return nil
	}); err != nil {
		return err
	}
	caller := m.Agents[st.callers[0]].Node
	if k.replayed, err = caller.SealRequest(st.tid(), "read:logs", nil, nil); err != nil {
		return err
	}
	k.misdirected, err = caller.SealRequest(m.Agents[m.Names()[len(m.Names())-1]].ID(), "read:logs", nil, nil)
	return err
}

// rejectionsOf returns the target's audited rejections of p.
func (st *attackStage) rejectionsOf(p peer.ID) []node.AuditRecord {
	tid, from := st.tid().String(), p.String()
	var out []node.AuditRecord
	for _, a := range st.m.Audit() {
		if a.Direction == "in" && a.Sender == from && a.Recipient == tid && a.Decision == "reject" {
			out = append(out, a)
		}
	}
	return out
}

// tally counts the target's audited rejections of the attacker (those with
// the attack's code apart), whether it cut the attacker off, and the
// handler runs the attacker caused.
func (st *attackStage) tally(res *AttackResult, attacker peer.ID) {
	for _, a := range st.rejectionsOf(attacker) {
		res.Rejected++
		if a.Reason == string(res.Attack.Code) {
			res.WithCode++
		}
		if a.Reason == string(protocol.CodeFlood) {
			res.CutOff = res.CutOff || a.Kind == "admission"
			res.Throttled = res.Throttled || a.Kind == "request"
		}
	}
	res.HandlerRuns = st.foreign.Load()
}
