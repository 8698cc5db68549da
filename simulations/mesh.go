//go:build meshsim

// Package simulations runs many meshagent nodes in one process, to check a
// topology, a failure or an attack before it happens in production. A Mesh
// makes the trust anchor, identities, credentials and tokens for its agents
// and starts them as real libp2p nodes on 127.0.0.1 (TCP or QUIC).
package simulations

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// quietLogger is the nodes' logger: errors only, on stderr.
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

// Options configure a Mesh.
type Options struct {
	// Transport is "tcp" (default) or "quic".
	Transport string
	// Audit, when set, receives every node's audit log.
	Audit io.Writer
	// Configure, when set, may adjust each node's config before New.
	Configure func(name string, c *node.Config)
	// HeartbeatInterval and DeadAfter override LocalConfig's 250 ms and
	// 3 s when set.
	HeartbeatInterval, DeadAfter time.Duration
	// CredentialTTL overrides the credentials' 24 h lifetime.
	CredentialTTL time.Duration
	// HostOptions, when set, gives each node the libp2p options of a
	// simulated network (node.SetHostOptions): its host is then built by
	// libp2p.New on that network.
	HostOptions func(name string) []libp2p.Option
}

// Agent is one member of a Mesh.
type Agent struct {
	Name       string
	Identity   *trust.Identity
	Credential *trust.Credential
	Node       *node.Node

	cfg      node.Config
	hostOpts []libp2p.Option // a simulated network's, if any
	addrs    []string        // where it listened: a restart listens there again
}

// ID returns the agent's peer ID.
func (a *Agent) ID() peer.ID { return a.Identity.PeerID() }

// Mesh is a set of running agents sharing one trust anchor.
type Mesh struct {
	Anchor *trust.AnchorKey
	Agents map[string]*Agent
	order  []string
	mu     sync.Mutex
	audit  []node.AuditRecord
	others int // records in audit that are not inbound rejections

	netMu sync.RWMutex
	group map[peer.ID]int // partition group per agent; nil: no partition
	loss  float64         // probability of dropping a registry message
	rng   *mrand.Rand
}

// NewMesh creates an anchor and one started node per name.
func NewMesh(ctx context.Context, names []string, opts Options) (*Mesh, error) {
	a, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	m := &Mesh{Anchor: a, Agents: map[string]*Agent{}, rng: mrand.New(mrand.NewPCG(1, 2))}
	for _, name := range names {
		if _, err := m.Add(ctx, name, true, opts); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// AgentNames returns n names for NewMesh: agent-00, agent-01, and so on
// (agent-100 from the hundred-and-first).
func AgentNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("agent-%02d", i)
	}
	return out
}

// Add starts one more agent. With enrolled false it gets an identity and a
// node but a credential from a different anchor: an outsider.
func (m *Mesh) Add(ctx context.Context, name string, enrolled bool, opts Options) (*Agent, error) {
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	issuer := m.Anchor
	if !enrolled {
		if issuer, err = trust.GenerateAnchorKey(rand.Reader); err != nil {
			return nil, err
		}
	}
	ttl := trust.DefaultCredentialTTL
	if opts.CredentialTTL > 0 {
		ttl = opts.CredentialTTL
	}
	cred, err := trust.IssueCredential(issuer, id.Public(), name, time.Now().Add(-time.Second), ttl)
	if err != nil {
		return nil, err
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential = id, cred
	cfg.Policy = trust.DefaultPolicy(issuer.Public())
	cfg.Audit = opts.Audit
	// Errors only: a loaded machine running many nodes makes pubsub warn
	// of slow heartbeats, which is the point of a simulation, not news.
	cfg.Logger = quietLogger
	if opts.Transport == "quic" {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/udp/0/quic-v1"}
	} else {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	if opts.HeartbeatInterval > 0 {
		cfg.HeartbeatInterval = opts.HeartbeatInterval
	}
	if opts.DeadAfter > 0 {
		cfg.DeadAfter = opts.DeadAfter
	}
	if opts.Configure != nil {
		opts.Configure(name, &cfg)
	}
	var hostOpts []libp2p.Option
	if opts.HostOptions != nil {
		hostOpts = opts.HostOptions(name)
	}
	return m.start(ctx, name, id, cred, cfg, hostOpts)
}

func (m *Mesh) start(ctx context.Context, name string, id *trust.Identity, cred *trust.Credential, cfg node.Config, hostOpts []libp2p.Option) (*Agent, error) {
	n, err := node.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(hostOpts) > 0 {
		n.SetHostOptions(hostOpts...)
	}
	self := id.PeerID()
	n.SetPeerFilter(func(p peer.ID) bool { return m.reachable(self, p) }) // partitions
	n.SetDropMessage(func(peer.ID) bool { return m.drop() })              // loss
	if err := n.Start(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	n.SetAuditHook(func(r node.AuditRecord) {
		if r.Kind == "liveness" {
			return // N² of them in a big mesh; Node.OnEvent has them
		}
		m.mu.Lock()
		if refused := r.Direction == "in" && r.Decision != "accept"; refused || m.others < maxOtherAudit {
			m.audit = append(m.audit, r)
			if !refused {
				m.others++
			}
		}
		m.mu.Unlock()
	})
	ag := &Agent{Name: name, Identity: id, Credential: cred, Node: n, cfg: cfg, hostOpts: hostOpts}
	for _, a := range n.Host().Addrs() {
		ag.addrs = append(ag.addrs, a.String())
	}
	m.mu.Lock()
	if _, ok := m.Agents[name]; !ok {
		m.order = append(m.order, name)
	}
	m.Agents[name] = ag
	m.mu.Unlock()
	return ag, nil
}

// ConnectAll connects every pair of enrolled agents and waits for admission.
func (m *Mesh) ConnectAll(ctx context.Context) error {
	for i, a := range m.order {
		for _, b := range m.order[i+1:] {
			if err := m.Connect(ctx, a, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// Connect connects agent a to agent b and completes admission; from then
// on a keeps the link up (node.KeepConnected), as with a bootstrap peer.
func (m *Mesh) Connect(ctx context.Context, a, b string) error {
	from, to := m.Agents[a], m.Agents[b]
	ai := peer.AddrInfo{ID: to.ID(), Addrs: to.Node.Host().Addrs()}
	err := from.Node.Join(ctx, ai, node.KeepConnected())
	// A dial that meets one from the other side on loopback TCP can become
	// a TCP simultaneous open, where both ends start the TLS handshake as
	// clients and it fails (go-libp2p#2925). The nodes' own dials (beat
	// links, reconnection) make that likely while a mesh is wired: dial
	// again, past the swarm's backoff. An admission stream reset by the
	// other side (its hello meeting ours on a second connection, on a
	// loaded machine) is tried again too: a refusal refuses the peer ID
	// for a minute, so a real one fails again.
	for try := 0; try < 3 && (isDialError(err) || errors.Is(err, network.ErrReset)); try++ {
		err = from.Node.Join(network.WithForceDirectDial(ctx, "simultaneous open"), ai)
	}
	if err != nil {
		return fmt.Errorf("connect %s -> %s: %w", a, b, err)
	}
	return nil
}

func isDialError(err error) bool {
	var de *swarm.DialError
	return errors.As(err, &de)
}

// Grant issues a root token from the anchor to the named agent and adds it
// to the agent's tokens.
func (m *Mesh) Grant(name string, scopes, delegatable []string, ttl time.Duration) (*trust.Token, error) {
	a := m.Agents[name]
	now := time.Now()
	t, err := trust.IssueToken(m.Anchor, a.Identity.Public(), trust.Grant{Scopes: scopes, Delegatable: delegatable, NotBefore: now.Add(-time.Minute), Expires: now.Add(ttl)}, now)
	if err != nil {
		return nil, err
	}
	a.Node.AddToken(t)
	return t, nil
}

// maxOtherAudit bounds the records a Mesh keeps besides the rejections of
// what nodes received: a load run accepts thousands of calls a second, an
// attacker records thousands of failed sends, and a slice of millions of
// records costs memory and, when it grows, pauses the whole process.
const maxOtherAudit = 10000

// Audit returns a copy of the audit records written so far by any node:
// every rejection of something a node received, and the first 10 000 of
// the others (acceptances, failed sends). Liveness changes are left out (a
// mesh of N writes N² of them: watch them with Node.OnEvent or the Audit
// option).
func (m *Mesh) Audit() []node.AuditRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]node.AuditRecord(nil), m.audit...)
}

// Names returns the agents' names in the order they were added.
func (m *Mesh) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.order...)
}

// ConnectRing connects each agent to the next, in order, and the last to
// the first: the sparsest connected topology.
func (m *Mesh) ConnectRing(ctx context.Context) error {
	names := m.Names()
	for i := range names {
		if err := m.Connect(ctx, names[i], names[(i+1)%len(names)]); err != nil {
			return err
		}
	}
	return nil
}

// ConnectSparse connects a ring plus, for each agent, chords to extra
// random others chosen from seed: average degree about 2+2*extra.
func (m *Mesh) ConnectSparse(ctx context.Context, extra int, seed uint64) error {
	if err := m.ConnectRing(ctx); err != nil {
		return err
	}
	names := m.Names()
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range names {
		for k := 0; k < extra; k++ {
			j := r.IntN(len(names))
			if j == i {
				continue
			}
			if err := m.Connect(ctx, names[i], names[j]); err != nil {
				return err
			}
		}
	}
	return nil
}

// Crash stops the named agent without a leave message.
func (m *Mesh) Crash(name string) { _ = m.Agents[name].Node.Crash() }

// Restart starts the named (crashed or closed) agent again with the same
// identity, credential, tokens and addresses, as a restarted daemon would,
// and connects it to peer. Agents that kept a link to it reconnect.
func (m *Mesh) Restart(ctx context.Context, name, peerName string) (*Agent, error) {
	old := m.Agents[name]
	_ = old.Node.Crash()
	tokens := old.Node.Tokens()
	cfg := old.cfg
	cfg.Tokens = tokens
	if len(old.addrs) > 0 {
		cfg.ListenAddrs = old.addrs
	}
	a, err := m.start(ctx, name, old.Identity, old.Credential, cfg, old.hostOpts)
	if err != nil {
		return nil, err
	}
	if peerName != "" {
		return a, m.Connect(ctx, name, peerName)
	}
	return a, nil
}

// Partition splits the mesh: agents in different groups can no longer
// connect, and their connections are closed. Agents in no group form one
// more group of their own.
func (m *Mesh) Partition(groups ...[]string) {
	m.netMu.Lock()
	m.group = map[peer.ID]int{}
	for i, g := range groups {
		for _, name := range g {
			m.group[m.Agents[name].ID()] = i + 1
		}
	}
	m.netMu.Unlock()
	for _, a := range m.Agents {
		h := a.Node.Host()
		if h == nil {
			continue
		}
		for _, p := range h.Network().Peers() {
			if !m.reachable(a.ID(), p) {
				_ = h.Network().ClosePeer(p)
			}
		}
	}
}

// Heal removes the partition. Agents reconnect through their bootstrap
// peers, or call Connect.
func (m *Mesh) Heal() {
	m.netMu.Lock()
	m.group = nil
	m.netMu.Unlock()
}

func (m *Mesh) reachable(a, b peer.ID) bool {
	m.netMu.RLock()
	defer m.netMu.RUnlock()
	if m.group == nil {
		return true
	}
	return m.group[a] == m.group[b]
}

// SetLoss makes every node drop each pubsub message it receives from a
// peer with probability p, as lossy links would (deterministic given the
// mesh's seed and the order of arrival).
func (m *Mesh) SetLoss(p float64) {
	m.netMu.Lock()
	m.loss = p
	m.netMu.Unlock()
}

func (m *Mesh) drop() bool {
	m.netMu.Lock()
	defer m.netMu.Unlock()
	return m.loss > 0 && m.rng.Float64() < m.loss
}

// Converged reports nil when every running agent sees every other running
// agent in state want, or an error naming one that does not.
func (m *Mesh) Converged(want string, except ...string) error {
	skip := map[string]bool{}
	for _, e := range except {
		skip[e] = true
	}
	for _, on := range m.Names() {
		if skip[on] {
			continue
		}
		seen := m.view(on)
		for _, of := range m.Names() {
			if of == on || skip[of] {
				continue
			}
			if st := stateName(seen[m.Agents[of].ID()].State); st != want {
				return fmt.Errorf("%s sees %s as %q, want %q", on, of, st, want)
			}
		}
	}
	return nil
}

// HeardSince reports nil when every running agent has heard from every
// other running agent after t (a heartbeat, say, where Converged may still
// rest on the records that listed them), or an error naming one that has
// not.
func (m *Mesh) HeardSince(t time.Time) error {
	for _, on := range m.Names() {
		seen := m.view(on)
		for _, of := range m.Names() {
			if at := seen[m.Agents[of].ID()].LastHeartbeat; of != on && !at.After(t) {
				return fmt.Errorf("%s last heard %s at %s, not after %s", on, of, at.Format(time.StampMilli), t.Format(time.StampMilli))
			}
		}
	}
	return nil
}

// WaitState waits up to timeout until observer sees subject in state want
// ("alive", "suspect", "dead"), polling.
func (m *Mesh) WaitState(observer, subject, want string, timeout time.Duration) error {
	return WaitFor(timeout, func() error {
		if st := m.StateOf(observer, subject); st != want {
			return fmt.Errorf("%s sees %s as %q, want %q", observer, subject, st, want)
		}
		return nil
	})
}

// WaitSilentDead waits up to timeout until observer sees subject dead and
// subject, silent since since (a freeze, say), has been so for more than
// silence. A test that then checks how a dead agent is refused passes the
// observer's DeadAfter plus a heartbeat as silence: a record subject
// signed just before going silent, which the observer has not seen yet,
// is a sign of life fresh enough to revive it until then.
func (m *Mesh) WaitSilentDead(observer, subject string, since time.Time, silence, timeout time.Duration) error {
	return WaitFor(timeout, func() error {
		if d := time.Since(since); d <= silence {
			return fmt.Errorf("%s silent for only %s", subject, d)
		}
		if st := m.StateOf(observer, subject); st != "dead" {
			return fmt.Errorf("%s sees %s as %q, want dead", observer, subject, st)
		}
		return nil
	})
}

// StateOf returns how observer sees subject ("" when unlisted).
func (m *Mesh) StateOf(observer, subject string) string {
	return stateName(m.view(observer)[m.Agents[subject].ID()].State)
}

// stateName is a state's name, "" for an unlisted agent.
func stateName(st discovery.State) string {
	b, _ := st.MarshalText()
	return string(b)
}

// view returns observer's registry entries by agent.
func (m *Mesh) view(observer string) map[peer.ID]discovery.Entry {
	out := map[peer.ID]discovery.Entry{}
	for _, e := range m.Agents[observer].Node.Peers() {
		out[e.PeerID] = e
	}
	return out
}

// Close stops every node, all at once.
func (m *Mesh) Close() {
	var wg sync.WaitGroup
	for _, a := range m.Agents {
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Node.Close() }()
	}
	wg.Wait()
}

// WaitFor polls cond every 10 ms until it returns nil or timeout passes,
// and returns its last error.
func WaitFor(timeout time.Duration, cond func() error) error {
	return WaitForEvery(timeout, 10*time.Millisecond, cond)
}

// WaitForEvery is WaitFor polling every interval: large meshes in virtual
// time poll less often, since each poll costs real CPU.
func WaitForEvery(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

// Stats is a snapshot of the process while a mesh runs.
type Stats struct {
	Nodes        int
	Goroutines   int
	HeapInUseMiB float64 // after a GC
	// LiveHeapMiB is the heap in use after a second GC, which also frees
	// what sync.Pool caches kept from the first (QUIC's packet buffers).
	LiveHeapMiB float64
	// StackMiB is the goroutines' stacks, which the heap figures leave out.
	StackMiB float64
}

// Stats returns the number of running nodes, goroutines and heap in use
// (after one GC, and after two), for per-node cost figures.
func (m *Mesh) Stats() Stats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := Stats{Nodes: len(m.Names()), Goroutines: runtime.NumGoroutine(), HeapInUseMiB: float64(ms.HeapInuse) / (1 << 20)}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	st.LiveHeapMiB, st.StackMiB = float64(ms.HeapInuse)/(1<<20), float64(ms.StackInuse)/(1<<20)
	return st
}

// TB is the part of testing.TB that CheckLeaks needs.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
}

// CheckLeaks fails t when, after its cleanups (so after the mesh closed),
// the process does not return to the number of goroutines it had when
// CheckLeaks was called, within 10 s. Call it first in a test.
func CheckLeaks(t TB) { t.Helper(); checkLeaks(t, 10*time.Second) }

func checkLeaks(t TB, within time.Duration) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		err := WaitFor(within, func() error {
			if n := runtime.NumGoroutine(); n > before {
				return fmt.Errorf("%d goroutines, %d before the test", n, before)
			}
			return nil
		})
		if err != nil {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %v\n%s", err, buf)
		}
	})
}

// Churn crashes a random agent and restarts it (connected to another
// random agent) every period, rounds times, choosing from seed; it returns
// the names it churned, in order.
func (m *Mesh) Churn(ctx context.Context, period time.Duration, rounds int, seed uint64) ([]string, error) {
	r := mrand.New(mrand.NewPCG(seed, ^seed))
	names := m.Names()
	var churned []string
	for i := 0; i < rounds; i++ {
		victim := names[r.IntN(len(names))]
		peerName := names[r.IntN(len(names))]
		for peerName == victim {
			peerName = names[r.IntN(len(names))]
		}
		m.Crash(victim)
		select {
		case <-ctx.Done():
			return churned, ctx.Err()
		case <-time.After(period):
		}
		if _, err := m.Restart(ctx, victim, peerName); err != nil {
			return churned, err
		}
		churned = append(churned, victim)
	}
	return churned, nil
}

// WireSparse builds the same topology as ConnectSparse (ring plus extra
// random chords per agent, from seed) but dials up to concurrency links at
// once, as a mesh whose nodes all start together would.
func (m *Mesh) WireSparse(ctx context.Context, extra int, seed uint64, concurrency int) error {
	names := m.Names()
	var links [][2]string
	for i := range names {
		links = append(links, [2]string{names[i], names[(i+1)%len(names)]})
	}
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range names {
		for k := 0; k < extra; k++ {
			if j := r.IntN(len(names)); j != i {
				links = append(links, [2]string{names[i], names[j]})
			}
		}
	}
	sem := make(chan struct{}, max(1, concurrency))
	errs := make(chan error, len(links))
	var wg sync.WaitGroup
	for _, l := range links {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- m.Connect(ctx, l[0], l[1])
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
