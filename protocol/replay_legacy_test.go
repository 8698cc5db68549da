package protocol

// The replay guard as it was before time-bucketed fingerprints (commit
// a168998), kept as the baseline of BenchmarkReplayGuard: a map of
// (sender, nonce) plus an expiry heap, about 150 bytes a nonce.

import (
	"container/heap"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/meshagent/meshagent/trust"
)

type legacyReplayKey [trust.PublicKeySize + 16]byte

type legacyReplayEntry struct {
	expires int64 // Unix nanoseconds
	key     legacyReplayKey
}

type legacyExpiryHeap []legacyReplayEntry

func (h legacyExpiryHeap) Len() int           { return len(h) }
func (h legacyExpiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h legacyExpiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *legacyExpiryHeap) Push(x any)        { *h = append(*h, x.(legacyReplayEntry)) }
func (h *legacyExpiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// legacyReplayGuard rejects an envelope whose timestamp is outside ±Window of the
// receiver's clock, or whose (sender, nonce) it has already seen. A nonce
// is remembered until its envelope's timestamp leaves the window, after
// which the timestamp check alone rejects it. Memory is bounded by
// MaxEntries (and MaxPerSender per sender); when full, the guard refuses
// new envelopes (CodeReplayFull) rather than forget an unexpired nonce.
// Safe for concurrent use.
type legacyReplayGuard struct {
	window       time.Duration
	maxEntries   int
	maxPerSender int

	mu        sync.Mutex
	seen      map[legacyReplayKey]struct{}
	exp       legacyExpiryHeap
	perSender map[trust.PublicKey]int
}

// newLegacyReplayGuard returns a guard. Zero values take the defaults.
func newLegacyReplayGuard(window time.Duration, maxEntries, maxPerSender int) *legacyReplayGuard {
	if window <= 0 {
		window = DefaultWindow
	}
	if maxEntries <= 0 {
		maxEntries = 1 << 18
	}
	if maxPerSender <= 0 || maxPerSender > maxEntries {
		maxPerSender = max(1, maxEntries/8)
	}
	return &legacyReplayGuard{window: window, maxEntries: maxEntries, maxPerSender: maxPerSender,
		seen: map[legacyReplayKey]struct{}{}, perSender: map[trust.PublicKey]int{}}
}

func legacyMakeKey(sender trust.PublicKey, nonce []byte) legacyReplayKey {
	var k legacyReplayKey
	copy(k[:], sender[:])
	if len(nonce) == 16 {
		copy(k[trust.PublicKeySize:], nonce)
	} else {
		h := sha256.Sum256(nonce)
		copy(k[trust.PublicKeySize:], h[:16])
	}
	return k
}

// CheckTime rejects a timestamp outside the window around now.
func (g *legacyReplayGuard) CheckTime(ts, now time.Time) error {
	d := now.Sub(ts)
	if d > g.window || d < -g.window {
		return Reject(CodeStale, "timestamp %s is %s away from this node's clock, outside the %s window", ts.UTC().Format(time.RFC3339Nano), d.Round(time.Millisecond), g.window)
	}
	return nil
}

// Seen reports whether (sender, nonce) is remembered. It does not record.
func (g *legacyReplayGuard) Seen(sender trust.PublicKey, nonce []byte) bool {
	k := legacyMakeKey(sender, nonce)
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.seen[k]
	return ok
}

// Record atomically checks and remembers (sender, nonce) for an envelope
// stamped ts. Call it only for an envelope that passed every other check.
func (g *legacyReplayGuard) Record(sender trust.PublicKey, nonce []byte, ts, now time.Time) error {
	if err := g.CheckTime(ts, now); err != nil {
		return err
	}
	k := legacyMakeKey(sender, nonce)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.legacyExpireLocked(now)
	if _, ok := g.seen[k]; ok {
		return Reject(CodeReplay, "nonce already seen from %s", sender)
	}
	if len(g.seen) >= g.maxEntries {
		return Reject(CodeReplayFull, "replay cache holds %d nonces, its limit", g.maxEntries)
	}
	if g.perSender[sender] >= g.maxPerSender {
		return Reject(CodeReplayFull, "replay cache holds %d nonces of %s, the per-sender limit", g.maxPerSender, sender)
	}
	g.seen[k] = struct{}{}
	g.perSender[sender]++
	heap.Push(&g.exp, legacyReplayEntry{expires: ts.Add(g.window).UnixNano(), key: k})
	return nil
}

func (g *legacyReplayGuard) legacyExpireLocked(now time.Time) {
	n := now.UnixNano()
	for len(g.exp) > 0 && g.exp[0].expires < n {
		e := heap.Pop(&g.exp).(legacyReplayEntry)
		delete(g.seen, e.key)
		var s trust.PublicKey
		copy(s[:], e.key[:trust.PublicKeySize])
		if c := g.perSender[s] - 1; c > 0 {
			g.perSender[s] = c
		} else {
			delete(g.perSender, s)
		}
	}
}

// Len returns the number of remembered nonces.
func (g *legacyReplayGuard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.seen)
}
