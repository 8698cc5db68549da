package simulations

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// LoadResult is what honest callers achieved over a period.
type LoadResult struct {
	Calls     int
	Failures  int
	Elapsed   time.Duration
	Latencies []time.Duration
}

// PerSecond returns successful calls per second.
func (r LoadResult) PerSecond() float64 {
	return float64(r.Calls-r.Failures) / r.Elapsed.Seconds()
}

// HonestLoad has each caller call action on target back to back for d, and
// collects every latency and failure.
func (m *Mesh) HonestLoad(ctx context.Context, callers []string, target, action string, d time.Duration) LoadResult {
	var mu sync.Mutex
	var res LoadResult
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
				res.Calls++
				if err != nil {
					res.Failures++
				} else {
					res.Latencies = append(res.Latencies, lat)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// AttackResult compares honest traffic with and without an attacker.
type AttackResult struct {
	N               int
	Baseline, Under LoadResult
	Attempts        int64 // attack requests the attacker sent
	Rejected        int64 // of which the target audited as rejected
	HandlerRuns     int64 // honest handler runs caused by the attacker: must be 0
}

// AttackScenario starts n honest agents and an enrolled attacker, measures
// honest calls to one target for d, then again for d while the attacker
// floods the same target with forged, replayed, stolen-token, escalated
// and garbage requests from 4 goroutines (see flood). The attacker runs in
// the same process: its own work shares the CPU with the honest agents.
// SeparateAttackScenario runs it in a process of its own.
func AttackScenario(ctx context.Context, n int, d time.Duration) (AttackResult, error) {
	res := AttackResult{N: n}
	var mal *Agent
	st, err := newAttackStage(ctx, n, func(m *Mesh) (err error) {
		opts := Options{HeartbeatInterval: 500 * time.Millisecond, DeadAfter: 5 * time.Second}
		if mal, err = m.Add(ctx, "mallory", true, opts); err != nil {
			return err
		}
		_, err = m.Grant("mallory", []string{"read:metrics"}, nil, time.Hour)
		return err
	})
	if err != nil {
		return res, err
	}
	defer st.m.Close()
	if err := st.m.Connect(ctx, "mallory", st.target); err != nil {
		return res, err
	}
	if err := st.baseline(ctx, &res, d); err != nil {
		return res, err
	}
	stop := make(chan struct{})
	var attempts atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		flood(ctx, mal.Node, mal.Identity, st.tid(), st.stolen, st.replayed(), stop, &attempts)
	}()
	res.Under = st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", d)
	close(stop)
	<-done
	res.Attempts = attempts.Load()
	st.tally(&res, mal.ID())
	return res, nil
}

// attackStage is what both attack scenarios share: n honest agents (a ring
// plus one chord each, seed 3), a target serving read:logs that counts its
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
	m, err := NewMesh(ctx, names(n), Options{HeartbeatInterval: 500 * time.Millisecond, DeadAfter: 5 * time.Second})
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

// replayed is an honest caller's sealed request, for the attacker to re-send.
func (st *attackStage) replayed() []byte {
	raw, _ := st.m.Agents[st.callers[0]].Node.SealRequest(st.tid(), "read:logs", nil, nil)
	return raw
}

// baseline waits for the registry to converge and measures the honest load
// without the attack.
func (st *attackStage) baseline(ctx context.Context, res *AttackResult, d time.Duration) error {
	if err := WaitFor(30*time.Second, func() error { return st.m.Converged("alive") }); err != nil {
		return err
	}
	res.Baseline = st.m.HonestLoad(ctx, st.callers, st.target, "read:logs", d)
	return nil
}

// tally counts the target's audited rejections of the attacker and the
// handler runs it caused.
func (st *attackStage) tally(res *AttackResult, attacker peer.ID) {
	tid := st.tid().String()
	for _, a := range st.m.Audit() {
		if a.Direction == "in" && a.Sender == attacker.String() && a.Recipient == tid && a.Decision == "reject" && a.Kind == "request" {
			res.Rejected++
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

// flood sends, from 4 goroutines until stop closes, forged envelopes (a
// flipped signature bit), an honest agent's envelope re-sent, calls with a
// stolen token, calls with an escalated chain, and garbage frames to
// target, counting attempts.
func flood(ctx context.Context, mal *node.Node, id *trust.Identity, tid peer.ID, stolen *trust.Token, replayed []byte, stop <-chan struct{}, attempts *atomic.Int64) {
	now := time.Now()
	escalated := mal.Tokens()[0].ForgeDelegation(id, id.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Minute)}, now)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				attempts.Add(1)
				switch i % 5 {
				case 0: // forged: flip a signature bit
					raw, _ := mal.SealRequest(tid, "read:logs", nil, stolen)
					raw[len(raw)-1] ^= 1
					_, _ = mal.SendRaw(ctx, tid, raw)
				case 1: // an honest agent's envelope, re-sent
					_, _ = mal.SendRaw(ctx, tid, replayed)
				case 2: // a stolen token
					_, _ = mal.Call(ctx, tid, "read:logs", nil, &node.CallOptions{Token: stolen})
				case 3: // an escalated chain
					_, _ = mal.Call(ctx, tid, "read:logs", nil, &node.CallOptions{Token: escalated})
				case 4: // garbage
					if s, err := mal.Host().NewStream(ctx, tid, protocol.ProtocolRPC); err == nil {
						_ = msgio.NewVarintWriter(s).WriteMsg([]byte("garbage"))
						_ = s.Reset()
					}
				}
			}
		}()
	}
	wg.Wait()
}
