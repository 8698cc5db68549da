package simulations

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// LoadResult is what honest callers achieved over a period.
type LoadResult struct {
	Calls     int // ended within the window (Failures among them)
	Failures  int
	Late      int // still in flight when the window ended
	Elapsed   time.Duration
	Latencies []time.Duration
	Errors    map[trust.Code]int // failures by code
}

// add counts o's calls in r.
func (r *LoadResult) add(o LoadResult) {
	r.Calls += o.Calls
	r.Failures += o.Failures
	r.Late += o.Late
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	for c, n := range o.Errors {
		r.Errors[c] += n
	}
}

// PerSecond returns successful calls per second.
func (r LoadResult) PerSecond() float64 {
	return float64(r.Calls-r.Failures) / r.Elapsed.Seconds()
}

// HonestLoad has each caller call action on target back to back for d, and
// collects every latency and failure. A call still in flight when d ends
// counts as late, not as served in d (its latency is kept): a stall shows
// as lost throughput, not as a longer window.
func (m *Mesh) HonestLoad(ctx context.Context, callers []string, target, action string, d time.Duration) LoadResult {
	var mu sync.Mutex
	res := LoadResult{Errors: map[trust.Code]int{}}
	var wg sync.WaitGroup
	tid := m.Agents[target].ID()
	start := time.Now()
	for _, c := range callers {
		n := m.Agents[c].Node
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				t0 := time.Now()
				_, err := n.Call(ctx, tid, action, nil, nil)
				lat := time.Since(t0)
				mu.Lock()
				switch {
				case time.Since(start) > d:
					res.Late++
					res.Latencies = append(res.Latencies, lat)
				case err != nil:
					res.Calls++
					res.Failures++
					res.Errors[trust.CodeOf(err)]++
				default:
					res.Calls++
					res.Latencies = append(res.Latencies, lat)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = d
	return res
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
	m, err := NewMesh(ctx, names(n), Options{HeartbeatInterval: 500 * time.Millisecond, DeadAfter: 5 * time.Second,
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

// RotationResult is steady traffic across credential rotations.
type RotationResult struct {
	N        int
	TTL      time.Duration
	Load     LoadResult
	Renewals int // credentials that changed during the run
}

// RotationScenario runs n agents (plus one issuer) whose credentials live
// ttl and renew at half-life, under steady calls for d.
func RotationScenario(ctx context.Context, n int, ttl, d time.Duration) (RotationResult, error) {
	res := RotationResult{N: n, TTL: ttl}
	opts := Options{HeartbeatInterval: 250 * time.Millisecond, DeadAfter: 3 * time.Second, CredentialTTL: ttl,
		Configure: func(_ string, c *node.Config) { c.RenewAfter = 0.5 }}
	m, err := NewMesh(ctx, names(n), opts)
	if err != nil {
		return res, err
	}
	defer m.Close()
	if _, err := m.Add(ctx, "issuer", true, Options{HeartbeatInterval: 250 * time.Millisecond, DeadAfter: 3 * time.Second,
		Configure: func(_ string, c *node.Config) { c.Issuer = m.Anchor }}); err != nil {
		return res, err
	}
	if err := m.ConnectSparse(ctx, 1, 5); err != nil {
		return res, err
	}
	for _, name := range m.Names() {
		if name != "issuer" {
			if err := m.Connect(ctx, name, "issuer"); err != nil {
				return res, err
			}
		}
	}
	target := m.Names()[0]
	_ = m.Agents[target].Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { return nil, nil })
	callers := m.Names()[1:6]
	for _, c := range callers {
		if _, err := m.Grant(c, []string{"read:logs"}, nil, time.Hour); err != nil {
			return res, err
		}
	}
	first := map[string][16]byte{}
	for _, name := range m.Names() {
		first[name] = m.Agents[name].Node.Credential().Serial
	}
	res.Load = m.HonestLoad(ctx, callers, target, "read:logs", d)
	for _, name := range m.Names() {
		if m.Agents[name].Node.Credential().Serial != first[name] {
			res.Renewals++
		}
	}
	return res, nil
}

// PartitionResult is the time a split mesh takes to agree again.
type PartitionResult struct {
	N         int
	Heartbeat time.Duration
	Split     time.Duration // until each side saw the whole other side dead
	Heal      time.Duration // from healing until every node saw every other alive
}

// PartitionScenario splits n agents in two halves, waits until each side
// has declared the other dead, heals, and measures re-convergence.
func PartitionScenario(ctx context.Context, n int, hb time.Duration) (PartitionResult, error) {
	res := PartitionResult{N: n, Heartbeat: hb}
	m, err := NewMesh(ctx, names(n), Options{HeartbeatInterval: hb, DeadAfter: 3 * hb})
	if err != nil {
		return res, err
	}
	defer m.Close()
	if err := m.ConnectSparse(ctx, 1, 9); err != nil {
		return res, err
	}
	if err := WaitFor(30*time.Second, func() error { return m.Converged("alive") }); err != nil {
		return res, err
	}
	all := m.Names()
	left, right := all[:n/2], all[n/2:]
	start := time.Now()
	m.Partition(left, right)
	if err := WaitFor(30*time.Second, func() error {
		for _, a := range left {
			for _, b := range right {
				if m.StateOf(a, b) != "dead" || m.StateOf(b, a) != "dead" {
					return fmt.Errorf("%s and %s still see each other", a, b)
				}
			}
		}
		return nil
	}); err != nil {
		return res, err
	}
	res.Split = time.Since(start)
	m.Heal()
	start = time.Now()
	for i := 0; i < 3 && i < len(left) && i < len(right); i++ {
		if err := m.Connect(ctx, left[i], right[i]); err != nil {
			return res, err
		}
	}
	if err := WaitFor(60*time.Second, func() error { return m.Converged("alive") }); err != nil {
		return res, err
	}
	res.Heal = time.Since(start)
	return res, nil
}
