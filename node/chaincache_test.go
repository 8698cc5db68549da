//go:build meshsim

package node_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// chainMesh is testMesh over TCP (orchestrator may delegate read:logs;
// mallory enrolled with no rights of her own) with cfg applied to every
// node, and a read:logs token from orchestrator to mallory that expires
// after ttl.
func chainMesh(t *testing.T, ttl time.Duration, cfg func(string, *node.Config)) (*simulations.Mesh, *atomic.Int32, *trust.Token) {
	t.Helper()
	m, runs := workerMesh(t, meshSpec{opts: simulations.Options{Configure: cfg}, others: []string{"mallory"},
		scopes: []string{"read:logs"}, delegatable: []string{"read:logs"}})
	tok, err := m.Agents["orchestrator"].Node.Delegate(nil, m.Agents["mallory"].Identity.Public(),
		trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: time.Now().Add(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return m, runs, tok
}

// callWithToken calls worker's read:logs from `from` with tok.
func callWithToken(m *simulations.Mesh, from string, tok *trust.Token) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := m.Agents[from].Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", []byte("today"), &node.CallOptions{Token: tok})
	return err
}

// warmChain makes calls with tok until worker accepted it twice: the
// second from its cache of authorized chains.
func warmChain(t *testing.T, m *simulations.Mesh, runs *atomic.Int32, tok *trust.Token) {
	t.Helper()
	if err := simulations.WaitFor(10*time.Second, func() error { return callWithToken(m, "mallory", tok) }); err != nil {
		t.Fatal(err)
	}
	if err := callWithToken(m, "mallory", tok); err != nil {
		t.Fatal(err)
	}
	if n := m.Agents["worker"].Node.Verifier().ChainCacheLen(); n < 1 {
		t.Fatalf("worker caches %d chains after two accepted calls", n)
	}
}

// refusedUnrun calls with tok and wants code, with the handler not run.
func refusedUnrun(t *testing.T, m *simulations.Mesh, runs *atomic.Int32, tok *trust.Token, code trust.Code) {
	t.Helper()
	before := runs.Load()
	err := callWithToken(m, "mallory", tok)
	if trust.CodeOf(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
	if got := runs.Load(); got != before {
		t.Fatalf("the handler ran %d times on a refused call", got-before)
	}
}

// A revocation that reaches the worker after it cached the chain takes
// effect on the very next call: refused, the handler never run. Other
// chains still pass.
func TestRevokedCachedChainRefusedOnTheNextCall(t *testing.T) {
	m, runs, tok := chainMesh(t, 30*time.Minute, nil)
	warmChain(t, m, runs, tok)
	r, err := trust.RevokeLink(m.Anchor, tok.Links[1].ID, time.Now(), trust.DefaultMaxTokenLife)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Agents["orchestrator"].Node.Revoke(ctx, r.Bytes()); err != nil {
		t.Fatal(err)
	}
	worker := m.Agents["worker"].Node
	if err := simulations.WaitForEvery(10*time.Second, time.Millisecond, func() error {
		if n := worker.Stats().Revocations; n != 1 {
			return fmt.Errorf("worker holds %d revocations", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	refusedUnrun(t, m, runs, tok, trust.CodeRevoked)
	refusedUnrun(t, m, runs, tok, trust.CodeRevoked)
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("the orchestrator's own chain: %v", err)
	}
}

// A cached chain is refused once it expires, the handler never run.
func TestExpiredCachedChainRefused(t *testing.T) {
	noSkew := func(_ string, c *node.Config) { c.Policy.ClockSkew = 0 }
	m, runs, tok := chainMesh(t, 3*time.Second, noSkew)
	warmChain(t, m, runs, tok)
	var unexpected error
	if err := simulations.WaitFor(10*time.Second, func() error {
		before := runs.Load()
		err := callWithToken(m, "mallory", tok)
		switch {
		case err == nil:
			return fmt.Errorf("still accepted")
		case trust.CodeOf(err) != trust.CodeExpired:
			unexpected = err
		case runs.Load() != before:
			unexpected = fmt.Errorf("the handler ran on a refused call")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if unexpected != nil {
		t.Fatal(unexpected)
	}
	refusedUnrun(t, m, runs, tok, trust.CodeExpired)
}

// A chain with one byte changed (in the leaf's signature, then in its
// body) misses the cache and is refused, the handler never run.
func TestChangedChainByteMissesTheCache(t *testing.T) {
	m, runs, tok := chainMesh(t, 30*time.Minute, nil)
	warmChain(t, m, runs, tok)
	raw := tok.Bytes()
	// The token ends with the leaf's 64-byte signature, after its tag
	// and length; before them, the leaf body ends with its 16-byte nonce.
	for _, i := range []int{len(raw) - 1, len(raw) - 64 - 2 - 1} {
		bad := append([]byte(nil), raw...)
		bad[i] ^= 0x01
		btok, err := trust.ParseToken(bad, trust.DefaultMaxTokenSize)
		if err != nil {
			t.Fatalf("byte %d: %v", i, err)
		}
		refusedUnrun(t, m, runs, btok, trust.CodeBadSignature)
	}
	if err := callWithToken(m, "mallory", tok); err != nil {
		t.Fatalf("the genuine chain after: %v", err)
	}
}

// An insider who may delegate mints distinct valid chains to itself: the
// worker's cache stays within its bound, and within the insider's share.
func TestChainCacheBoundedUnderAFloodOfValidChains(t *testing.T) {
	const size = 64
	small := func(name string, c *node.Config) {
		if name == "worker" {
			c.Policy.ChainCacheSize = size
		}
	}
	m, runs, tok := chainMesh(t, 30*time.Minute, small)
	warmChain(t, m, runs, tok)
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatal(err)
	}
	mallory, worker := m.Agents["mallory"], m.Agents["worker"].Node
	for i := 0; i < 48; i++ {
		mine, err := mallory.Node.Delegate(tok, mallory.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: time.Now().Add(10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if err := callWithToken(m, "mallory", mine); err != nil {
			t.Fatal(err)
		}
		if n := worker.Verifier().ChainCacheLen(); n > size {
			t.Fatalf("worker caches %d chains, bound %d", n, size)
		}
	}
	// Mallory's share is 32 (trust.chainsPerHolder); the orchestrator's
	// one chain is not pushed out by hers.
	if n := worker.Verifier().ChainCacheLen(); n != 33 {
		t.Fatalf("worker caches %d chains, want mallory's 32 and the orchestrator's", n)
	}
}

// The caller's token choice follows a revocation at once: the next call
// carries no token (no_token at the callee, which may not have the
// revocation yet: a stale choice would be accepted there or refused as
// revoked), the handler never run; after AddToken the next call carries
// the new one.
func TestTokenChoiceFollowsRevocationAndAddToken(t *testing.T) {
	m, runs := workerMesh(t, meshSpec{warm: true})
	orch := m.Agents["orchestrator"].Node
	held := orch.Tokens()
	if len(held) != 1 {
		t.Fatalf("orchestrator holds %d tokens", len(held))
	}
	for range 3 {
		if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
			t.Fatal(err)
		}
	}
	r, err := trust.RevokeLink(m.Anchor, held[0].Links[0].ID, time.Now(), trust.DefaultMaxTokenLife)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := orch.Revoke(ctx, r.Bytes()); err != nil {
		t.Fatal(err)
	}
	before := runs.Load()
	if _, err := call(m, "orchestrator", "worker", "read:logs"); trust.CodeOf(err) != protocol.CodeNoToken {
		t.Fatalf("the call after revoking the only token: %v, want no_token", err)
	}
	if runs.Load() != before {
		t.Fatal("the handler ran on a refused call")
	}
	if _, err := m.Grant("orchestrator", []string{"read:logs"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("the call after AddToken: %v", err)
	}
	if runs.Load() != before+1 {
		t.Fatal("the handler did not run once")
	}
}
