package trust

import (
	"container/list"
	"fmt"
	"sync"
	"time"

	"github.com/meshagent/meshagent/wire"
)

// Policy is what a mesh trusts and the limits it enforces.
type Policy struct {
	// Anchors are the trusted anchor keys. Several may be configured so that
	// an anchor can be rotated without downtime. Required.
	Anchors []PublicKey
	// ClockSkew is tolerated on every not-before and expiry. Default 30 s.
	ClockSkew time.Duration
	// MaxDepth is the longest chain accepted. Default 8.
	MaxDepth int
	// MaxTokenSize is the largest encoded token accepted. Default 4096 bytes.
	MaxTokenSize int
	// MaxCredentialLifetime is the longest credential accepted. Default 7 days.
	MaxCredentialLifetime time.Duration
	// MaxTokenLifetime is the longest link lifetime accepted. It also bounds
	// how long revocations must be remembered. Default 30 days.
	MaxTokenLifetime time.Duration
	// MaxRevocations bounds the revocation set (entries). When it is full
	// new revocations are refused (CodeFull) rather than forgetting one that
	// still matters. Default 65536 (about 6 MiB).
	MaxRevocations int
	// CacheSize bounds the cache of verified link signatures. Default 16384
	// entries (about 2 MiB).
	CacheSize int
	// ChainCacheSize bounds the cache of authorized chains, by the hash of
	// their encoded bytes (Verifier.DecodeToken), at most 32 per leaf
	// holder. Zero: no cache. Default DefaultChainCacheSize (2048: about
	// 2.5 MiB of depth-1 chains, 10 MiB at depth 5, 28 MiB at most).
	ChainCacheSize int
}

// DefaultPolicy returns the defaults for the given anchors.
func DefaultPolicy(anchors ...PublicKey) Policy {
	return Policy{
		Anchors:               anchors,
		ClockSkew:             30 * time.Second,    // tolerated clock difference between agents
		MaxDepth:              DefaultMaxDepth,     // links per chain
		MaxTokenSize:          DefaultMaxTokenSize, // bytes per token
		MaxCredentialLifetime: 7 * 24 * time.Hour,  // a week; credentials default to a day
		MaxTokenLifetime:      DefaultMaxTokenLife, // 30 days
		MaxRevocations:        65536,               // entries, about 6 MiB
		CacheSize:             16384,               // verified links, about 2 MiB
		// authorized chains by their bytes' hash, 2.5 to 28 MiB when full
		ChainCacheSize: DefaultChainCacheSize,
	}
}

// Verifier checks credentials and tokens against a Policy and a revocation
// set. It is safe for concurrent use.
type Verifier struct {
	p       Policy
	anchors map[PublicKey]struct{}
	cache   *linkCache
	chains  *chainCache // nil: none
	revs    *revocationSet
}

// NewVerifier validates p and builds a Verifier.
func NewVerifier(p Policy) (*Verifier, error) {
	if len(p.Anchors) == 0 {
		return nil, fmt.Errorf("trust: policy has no trust anchors")
	}
	if p.ClockSkew < 0 || p.MaxDepth < 1 || p.MaxTokenSize < 256 || p.MaxCredentialLifetime <= 0 ||
		p.MaxTokenLifetime <= 0 || p.MaxRevocations < 1 || p.CacheSize < 0 || p.ChainCacheSize < 0 {
		return nil, fmt.Errorf("trust: invalid policy (start from DefaultPolicy): %+v", p)
	}
	v := &Verifier{p: p, anchors: map[PublicKey]struct{}{}, cache: newLinkCache(p.CacheSize), revs: newRevocationSet(p.MaxRevocations)}
	if p.ChainCacheSize > 0 {
		v.chains = newChainCache(p.ChainCacheSize)
	}
	for _, a := range p.Anchors {
		if a.IsZero() {
			return nil, fmt.Errorf("trust: zero anchor key")
		}
		if err := a.checkPoint(); err != nil {
			return nil, fmt.Errorf("trust: anchor: %w", err)
		}
		v.anchors[a] = struct{}{}
	}
	return v, nil
}

// Policy returns the policy in force.
func (v *Verifier) Policy() Policy { return v.p }

// IsAnchor reports whether k is a configured anchor.
func (v *Verifier) IsAnchor(k PublicKey) bool { _, ok := v.anchors[k]; return ok }

func (v *Verifier) checkWindow(nb, exp time.Time, now time.Time, link int, what string) error {
	if now.Before(nb.Add(-v.p.ClockSkew)) {
		return fail(CodeNotYetValid, link, "%s is valid from %s", what, nb.UTC().Format(time.RFC3339))
	}
	if !now.Before(exp.Add(v.p.ClockSkew)) {
		return fail(CodeExpired, link, "%s expired at %s", what, exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// VerifyCredential checks that c is signed by a configured anchor, valid at
// now, no longer-lived than the policy allows and not revoked.
func (v *Verifier) VerifyCredential(c *Credential, now time.Time) error {
	if !v.IsAnchor(c.Issuer) {
		return fail(CodeUntrustedRoot, -1, "credential issuer %s is not a trusted anchor", c.Issuer)
	}
	if !c.NotBefore.Before(c.Expires) {
		return fail(CodeMalformed, -1, "credential expiry is not after its not-before")
	}
	if c.Expires.Sub(c.NotBefore) > v.p.MaxCredentialLifetime {
		return fail(CodeLifetime, -1, "credential lifetime %s exceeds the maximum %s", c.Expires.Sub(c.NotBefore), v.p.MaxCredentialLifetime)
	}
	if !c.Issuer.Verify(wire.DomainCredential, c.body, c.sig) {
		return fail(CodeBadSignature, -1, "credential signature does not verify")
	}
	if err := v.checkWindow(c.NotBefore, c.Expires, now, -1, "credential"); err != nil {
		return err
	}
	return v.revs.credentialRevoked(c, now)
}

// RecheckCredential re-checks a credential that VerifyCredential accepted
// before: its validity window at now and revocation, without the signature
// check. Registries call it on every tick and heartbeat.
func (v *Verifier) RecheckCredential(c *Credential, now time.Time) error {
	if err := v.checkWindow(c.NotBefore, c.Expires, now, -1, "credential"); err != nil {
		return err
	}
	return v.revs.credentialRevoked(c, now)
}

// VerifyChain checks that t is a valid chain at now: rooted in a configured
// anchor, no deeper than the limit, every link well formed, signed by its
// issuer, no wider than its parent, inside its validity window, within the
// lifetime limit and unrevoked. It does not check who presents it: see
// Authorize.
func (v *Verifier) VerifyChain(t *Token, now time.Time) error {
	_, err := v.verifyChain(t, now)
	return err
}

// verifyChain is VerifyChain; it also returns the revocation generation
// at which the chain was found unrevoked.
func (v *Verifier) verifyChain(t *Token, now time.Time) (uint64, error) {
	if len(t.Links) == 0 {
		return 0, fail(CodeMalformed, -1, "token has no links")
	}
	if len(t.Links) > v.p.MaxDepth {
		return 0, fail(CodeTooDeep, v.p.MaxDepth, "chain has %d links, at most %d", len(t.Links), v.p.MaxDepth)
	}
	if !v.IsAnchor(t.Anchor) {
		return 0, fail(CodeUntrustedRoot, 0, "anchor %s is not trusted", t.Anchor)
	}
	// Structure and narrowing: cheap, no crypto.
	for i, l := range t.Links {
		if err := checkLinkShape(l, i); err != nil {
			return 0, err
		}
		if l.Expires.Sub(l.NotBefore) > v.p.MaxTokenLifetime {
			return 0, fail(CodeLifetime, i, "link lifetime %s exceeds the maximum %s", l.Expires.Sub(l.NotBefore), v.p.MaxTokenLifetime)
		}
		if i > 0 {
			if err := checkNarrowing(t.Links[i-1], l, i); err != nil {
				return 0, err
			}
		}
	}
	// Signatures, each at most once thanks to the cache.
	h := rootHash(t.Anchor)
	issuer := t.Anchor
	for i, l := range t.Links {
		next := nextHash(h, l.body, l.sig)
		if !v.cache.has(next) {
			if !issuer.Verify(wire.DomainLink, linkMessage(h, l.body), l.sig) {
				return 0, fail(CodeBadSignature, i, "link signature does not verify")
			}
			v.cache.add(next)
		}
		h, issuer = next, l.Holder
	}
	if err := v.checkWindows(t, now); err != nil {
		return 0, err
	}
	return v.revs.chainRevoked(t)
}

// checkWindows checks every link's validity window at now, in order.
func (v *Verifier) checkWindows(t *Token, now time.Time) error {
	for i, l := range t.Links {
		if err := v.checkWindow(l.NotBefore, l.Expires, now, i, "link"); err != nil {
			return err
		}
	}
	return nil
}

// Authorize checks that t authorizes action for sender at now: the chain
// is valid (VerifyChain), sender is the leaf's holder, and action is one of
// the leaf's scopes. For a token that Verifier.DecodeToken took from its
// cache of authorized chains, only validity at now, revocations, holder
// and action are checked again; a token that DecodeToken decoded is cached
// once accepted.
func (v *Verifier) Authorize(t *Token, sender PublicKey, action string, now time.Time) error {
	if err := ValidateScope(action); err != nil {
		return err
	}
	if e := t.entry; e != nil && e.verified && e.cache == v.chains {
		return v.authorizeCached(e, sender, action, now)
	}
	gen, err := v.verifyChain(t, now)
	if err != nil {
		return err
	}
	leaf := t.Leaf()
	if !leaf.Holder.Equal(sender) {
		return fail(CodeNotHolder, len(t.Links)-1, "token is held by %s, presented by %s", leaf.Holder, sender)
	}
	if !contains(leaf.Scopes, action) {
		return fail(CodeScopeNotGranted, len(t.Links)-1, "action %q is not among the token's scopes %v", action, leaf.Scopes)
	}
	v.remember(t, gen)
	return nil
}

// linkCache remembers chain hashes whose link signature verified. A hit
// means the same link, with the same history, was verified before, so the
// signature check can be skipped; the time and revocation checks are
// never cached. Bounded LRU.
type linkCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[[32]byte]*list.Element
}

func newLinkCache(max int) *linkCache {
	return &linkCache{max: max, ll: list.New(), m: make(map[[32]byte]*list.Element)}
}

func (c *linkCache) has(h [32]byte) bool {
	if c.max == 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[h]
	if ok {
		c.ll.MoveToFront(e)
	}
	return ok
}

func (c *linkCache) add(h [32]byte) {
	if c.max == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[h]; ok {
		return
	}
	c.m[h] = c.ll.PushFront(h)
	if c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.([32]byte))
	}
}
