// Package simulations runs many meshagent nodes in one process, to check a
// topology, a failure or an attack before it happens in production. A Mesh
// makes the trust anchor, identities, credentials and tokens for its agents
// and starts them as real libp2p nodes on 127.0.0.1 (TCP or QUIC).
package simulations

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// Options configure a Mesh.
type Options struct {
	// Transport is "tcp" (default) or "quic".
	Transport string
	// Audit, when set, receives every node's audit log.
	Audit io.Writer
	// Configure, when set, may adjust each node's config before New.
	Configure func(name string, c *node.Config)
}

// Agent is one member of a Mesh.
type Agent struct {
	Name       string
	Identity   *trust.Identity
	Credential *trust.Credential
	Node       *node.Node
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
}

// NewMesh creates an anchor and one started node per name.
func NewMesh(ctx context.Context, names []string, opts Options) (*Mesh, error) {
	a, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	m := &Mesh{Anchor: a, Agents: map[string]*Agent{}}
	for _, name := range names {
		if _, err := m.Add(ctx, name, true, opts); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
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
	cred, err := trust.IssueCredential(issuer, id.Public(), name, time.Now().Add(-time.Minute), trust.DefaultCredentialTTL)
	if err != nil {
		return nil, err
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential = id, cred
	cfg.Policy = trust.DefaultPolicy(issuer.Public())
	cfg.Audit = opts.Audit
	if opts.Transport == "quic" {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/udp/0/quic-v1"}
	} else {
		cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	if opts.Configure != nil {
		opts.Configure(name, &cfg)
	}
	n, err := node.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := n.Start(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	n.SetAuditHook(func(r node.AuditRecord) {
		m.mu.Lock()
		m.audit = append(m.audit, r)
		m.mu.Unlock()
	})
	ag := &Agent{Name: name, Identity: id, Credential: cred, Node: n}
	m.mu.Lock()
	m.Agents[name] = ag
	m.order = append(m.order, name)
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

// Connect connects agent a to agent b and completes admission.
func (m *Mesh) Connect(ctx context.Context, a, b string) error {
	from, to := m.Agents[a], m.Agents[b]
	if err := from.Node.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Node.Host().Addrs()}); err != nil {
		return fmt.Errorf("connect %s -> %s: %w", a, b, err)
	}
	return nil
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

// Audit returns a copy of every audit record written so far by any node.
func (m *Mesh) Audit() []node.AuditRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]node.AuditRecord(nil), m.audit...)
}

// Close stops every node.
func (m *Mesh) Close() {
	for _, a := range m.Agents {
		a.Node.Close()
	}
}

// WaitFor polls cond every 10 ms until it returns nil or timeout passes,
// and returns its last error.
func WaitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
