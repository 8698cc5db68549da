//go:build meshsim

package simulations

import (
	"context"
	"time"

	"github.com/meshagent/meshagent/node"
)

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
	m, err := NewMesh(ctx, AgentNames(n), opts)
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
