package protocol

import (
	"container/heap"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// Replay guard bounds.
const (
	// DefaultReplayEntries bounds the nonces remembered at once. Each entry
	// costs about 150 bytes (map entry plus expiry heap entry), so the
	// default bound is about 38 MiB. At the 5-minute window that sustains
	// about 870 accepted envelopes per second across all senders.
	DefaultReplayEntries = 1 << 18
	// DefaultReplayPerSender bounds the nonces of one sender, so that one
	// (authenticated, credentialed) agent flooding the node cannot lock out
	// the others: an eighth of the total.
	DefaultReplayPerSender = DefaultReplayEntries / 8
)

type replayKey [trust.PublicKeySize + 16]byte

type replayEntry struct {
	expires int64 // Unix nanoseconds
	key     replayKey
}

type expiryHeap []replayEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires < h[j].expires }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(replayEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// ReplayGuard rejects an envelope whose timestamp is outside ±Window of the
// receiver's clock, or whose (sender, nonce) it has already seen. A nonce
// is remembered until its envelope's timestamp leaves the window, after
// which the timestamp check alone rejects it. Memory is bounded by
// MaxEntries (and MaxPerSender per sender); when full, the guard refuses
// new envelopes (CodeReplayFull) rather than forget an unexpired nonce.
// Safe for concurrent use.
type ReplayGuard struct {
	window       time.Duration
	maxEntries   int
	maxPerSender int

	mu        sync.Mutex
	seen      map[replayKey]struct{}
	exp       expiryHeap
	perSender map[trust.PublicKey]int
}

// NewReplayGuard returns a guard. Zero values take the defaults.
func NewReplayGuard(window time.Duration, maxEntries, maxPerSender int) *ReplayGuard {
	if window <= 0 {
		window = DefaultWindow
	}
	if maxEntries <= 0 {
		maxEntries = DefaultReplayEntries
	}
	if maxPerSender <= 0 || maxPerSender > maxEntries {
		maxPerSender = max(1, maxEntries/8)
	}
	return &ReplayGuard{window: window, maxEntries: maxEntries, maxPerSender: maxPerSender,
		seen: map[replayKey]struct{}{}, perSender: map[trust.PublicKey]int{}}
}

// Window returns the replay window.
func (g *ReplayGuard) Window() time.Duration { return g.window }

func makeKey(sender trust.PublicKey, nonce []byte) replayKey {
	var k replayKey
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
func (g *ReplayGuard) CheckTime(ts, now time.Time) error {
	d := now.Sub(ts)
	if d > g.window || d < -g.window {
		return Reject(CodeStale, "timestamp %s is %s away from this node's clock, outside the %s window", ts.UTC().Format(time.RFC3339Nano), d.Round(time.Millisecond), g.window)
	}
	return nil
}

// Seen reports whether (sender, nonce) is remembered. It does not record.
func (g *ReplayGuard) Seen(sender trust.PublicKey, nonce []byte) bool {
	k := makeKey(sender, nonce)
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.seen[k]
	return ok
}

// Record atomically checks and remembers (sender, nonce) for an envelope
// stamped ts. Call it only for an envelope that passed every other check.
func (g *ReplayGuard) Record(sender trust.PublicKey, nonce []byte, ts, now time.Time) error {
	if err := g.CheckTime(ts, now); err != nil {
		return err
	}
	k := makeKey(sender, nonce)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.expireLocked(now)
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
	heap.Push(&g.exp, replayEntry{expires: ts.Add(g.window).UnixNano(), key: k})
	return nil
}

func (g *ReplayGuard) expireLocked(now time.Time) {
	n := now.UnixNano()
	for len(g.exp) > 0 && g.exp[0].expires < n {
		e := heap.Pop(&g.exp).(replayEntry)
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
func (g *ReplayGuard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.seen)
}
