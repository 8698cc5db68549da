package trust

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultChainCacheSize bounds the cache of authorized chains. An entry
// holds about 1.2 KiB at depth 1, 5 KiB at depth 5 with four long scopes,
// and about 14 KiB at the 4 KiB token limit (TestChainCacheEntrySize), so
// 2.5 to 28 MiB when full.
const DefaultChainCacheSize = 2048

// chainsPerHolder bounds the entries of one leaf holder, so that an insider
// minting distinct valid chains (a delegatable scope lets it delegate to
// itself at will) only pushes out its own.
const chainsPerHolder = 32

// chainCache remembers tokens that Authorize accepted, by SHA-256 of their
// encoded bytes: what was checked once for good (decoding, depth, anchor,
// shapes, lifetimes, narrowing, signatures), against a policy and anchors
// that are fixed for the verifier's life (a new set of anchors is a new
// Verifier, with an empty cache). Time, revocations, holder and action are
// checked on every use (authorizeCached). Bounded LRU, with at most
// chainsPerHolder entries per leaf holder.
type chainCache struct {
	mu        sync.Mutex
	max       int
	perHolder int
	ll        *list.List                 // of *chainEntry, front most recently used
	m         map[[32]byte]*list.Element // in ll
	holders   map[PublicKey]*list.List   // per holder, of *list.Element of ll
}

// chainEntry is one authorized chain. Everything but gen is set before the
// entry is published and never changes.
type chainEntry struct {
	cache    *chainCache
	key      [32]byte
	verified bool // false: a token decoded on a miss, not yet authorized
	own      *Token
	holder   PublicKey
	scopes   []string
	nb, exp  time.Time     // latest not-before and earliest expiry of the links
	gen      atomic.Uint64 // revocation generation at which it was last found unrevoked
	hel      *list.Element // in cache.holders[holder]
}

func newChainCache(max int) *chainCache {
	per := min(chainsPerHolder, max)
	return &chainCache{max: max, perHolder: per, ll: list.New(), m: map[[32]byte]*list.Element{}, holders: map[PublicKey]*list.List{}}
}

func (c *chainCache) get(key [32]byte) *chainEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[key]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(el)
	e := el.Value.(*chainEntry)
	c.holders[e.holder].MoveToFront(e.hel)
	return e
}

func (c *chainCache) add(e *chainEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[e.key]; ok {
		return
	}
	if hl := c.holders[e.holder]; hl != nil && hl.Len() >= c.perHolder {
		c.removeLocked(hl.Back().Value.(*list.Element)) // the holder's own least recent
	} else if c.ll.Len() >= c.max {
		c.removeLocked(c.ll.Back())
	}
	hl := c.holders[e.holder]
	if hl == nil {
		hl = list.New()
		c.holders[e.holder] = hl
	}
	el := c.ll.PushFront(e)
	c.m[e.key] = el
	e.hel = hl.PushFront(el)
}

func (c *chainCache) remove(e *chainEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[e.key]; ok && el.Value.(*chainEntry) == e {
		c.removeLocked(el)
	}
}

func (c *chainCache) removeLocked(el *list.Element) {
	e := el.Value.(*chainEntry)
	c.ll.Remove(el)
	delete(c.m, e.key)
	hl := c.holders[e.holder]
	hl.Remove(e.hel)
	if hl.Len() == 0 {
		delete(c.holders, e.holder)
	}
}

func (c *chainCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// DecodeToken decodes an encoded token of at most the policy's
// MaxTokenSize bytes, as ParseToken. A token whose exact bytes Authorize
// accepted before comes from the cache of authorized chains, and Authorize
// then checks only what can change: validity at now, revocations, holder
// and action. Such a token is shared: it must not be modified.
func (v *Verifier) DecodeToken(raw []byte) (*Token, error) {
	if v.chains == nil {
		return ParseToken(raw, v.p.MaxTokenSize)
	}
	if len(raw) > v.p.MaxTokenSize {
		return nil, fail(CodeTooLarge, -1, "token is %d bytes, at most %d", len(raw), v.p.MaxTokenSize)
	}
	key := sha256.Sum256(raw)
	if e := v.chains.get(key); e != nil {
		return e.own, nil
	}
	t, err := ParseToken(raw, v.p.MaxTokenSize)
	if err != nil {
		return nil, err
	}
	t.entry = &chainEntry{cache: v.chains, key: key}
	return t, nil
}

// ChainCacheLen returns how many authorized chains are cached.
func (v *Verifier) ChainCacheLen() int {
	if v.chains == nil {
		return 0
	}
	return v.chains.len()
}

// Generation changes whenever a revocation is added. Together with time,
// it is all that can change Authorize's verdict on a given token: a
// verdict reached at one generation holds, while now stays within the
// token's window (Token.Window), until the generation changes.
func (v *Verifier) Generation() uint64 { return v.revs.gen.Load() }

// Window returns the span in which every link of t is valid: the latest
// not-before and the earliest expiry (before the policy's clock skew).
func (t *Token) Window() (notBefore, expires time.Time) {
	for i, l := range t.Links {
		if i == 0 || l.NotBefore.After(notBefore) {
			notBefore = l.NotBefore
		}
		if i == 0 || l.Expires.Before(expires) {
			expires = l.Expires
		}
	}
	return notBefore, expires
}

// remember caches t, which Authorize has just accepted in full at
// revocation generation gen, if DecodeToken decoded it on a miss.
func (v *Verifier) remember(t *Token, gen uint64) {
	e := t.entry
	if e == nil || e.verified || e.cache != v.chains {
		return
	}
	e.own = t
	e.holder = t.Leaf().Holder
	e.scopes = append([]string(nil), t.Leaf().Scopes...)
	e.nb, e.exp = t.Window()
	e.gen.Store(gen)
	e.verified = true
	v.chains.add(e)
}

// authorizeCached is Authorize for a chain accepted before: the same
// checks in the same order, with the same errors, minus what cannot have
// changed.
func (v *Verifier) authorizeCached(e *chainEntry, sender PublicKey, action string, now time.Time) error {
	if now.Before(e.nb.Add(-v.p.ClockSkew)) || !now.Before(e.exp.Add(v.p.ClockSkew)) {
		return v.checkWindows(e.own, now) // names the first link out of its window
	}
	if g := v.revs.gen.Load(); g != e.gen.Load() {
		g, err := v.revs.chainRevoked(e.own)
		if err != nil {
			e.cache.remove(e)
			return err
		}
		e.gen.Store(g)
	}
	if !e.holder.Equal(sender) {
		return fail(CodeNotHolder, len(e.own.Links)-1, "token is held by %s, presented by %s", e.holder, sender)
	}
	if !contains(e.scopes, action) {
		return fail(CodeScopeNotGranted, len(e.own.Links)-1, "action %q is not among the token's scopes %v", action, e.scopes)
	}
	return nil
}
