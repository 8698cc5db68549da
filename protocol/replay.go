package protocol

import (
	"hash/maphash"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/meshagent/meshagent/trust"
)

// Replay guard bounds.
const (
	// DefaultReplayBytes bounds the memory of a guard built with the
	// default capacity: its fingerprint table at its largest, plus its
	// per-sender counts at DefaultReplaySenders senders.
	DefaultReplayBytes = 64 << 20
	// DefaultReplaySenders bounds the senders that hold remembered nonces
	// at once (about 300 bytes each for their counts). A sender beyond it
	// is refused busy until one of them holds none.
	DefaultReplaySenders = 8192
	// DefaultReplayEntries is the default capacity in nonces: what
	// DefaultReplayBytes holds at 8 bytes a nonce with the table at most
	// 85 % full (9.4 bytes a nonce), after the per-sender counts and
	// 1 MiB of slack: 6 684 672 nonces. An honest nonce is remembered
	// until its timestamp leaves the window (plus up to a 32nd of the
	// window: buckets go whole), so from 1× the window (sender's clock in
	// step with ours) to 2× (sender's clock a full window ahead) after it
	// arrived. At the default 5-minute window the default capacity
	// sustains, below the high-water mark where the fair-share rule starts
	// (see ReplayGuard), about 20 000 accepted envelopes a second with
	// clocks in step and 10 000 a second with every sender a full window
	// ahead: 6 266 880 / (600 s + 9.4 s) = 10 284.
	DefaultReplayEntries = (DefaultReplayBytes - DefaultReplaySenders*replaySenderBytes - 1<<20) / 8 * replayMaxLoad / 100
	// DefaultReplayPerSender is the default per-sender cap: none. While
	// there is room, one sender may use all of it (an orchestrator at the
	// node's full RPC rate); when the guard is nearly full, senders above
	// their fair share are refused first (see ReplayGuard).
	DefaultReplayPerSender = 0
)

const (
	// replayEpochsPerWindow: a bucket spans a 32nd of the window, so an
	// entry outlives its timestamp's window by at most 3 %.
	replayEpochsPerWindow = 32
	// replayLiveEpochs bounds the buckets alive at once: timestamps within
	// [now-W, now+W] fall in at most 2*32+1 buckets (66 with rounding).
	replayLiveEpochs = 2*replayEpochsPerWindow + 2
	// replayTags: a table word keeps its bucket as a 7-bit tag, epoch mod
	// 127, plus one (0 is an empty slot). 127 > replayLiveEpochs, so the
	// tags of the buckets a shard holds are distinct.
	replayTags    = 127
	replayTagMask = 0x7f
	// replayMaxLoad: a shard's table is at most this percent full.
	replayMaxLoad = 85
	// replayShardBits: at most 128 shards. The shard is the fingerprint's
	// top 7 bits and a word keeps the other 57, so a word stands for all
	// 64 bits of the fingerprint.
	replayShardBits = 7
	// replayMinShardSlots: the smallest table a shard grows from or
	// shrinks to; replayShardEntries: the fewest nonces a shard is sized
	// for before the guard uses fewer shards.
	replayMinShardSlots = 16
	replayShardEntries  = 512
	// replaySenderBytes is what one sender's counts cost, rounded up
	// (replaySender is 272 bytes, its allocation 288, its map slot about
	// 60 at the map's load).
	replaySenderBytes = 384
)

// ReplayGuard rejects an envelope whose timestamp is outside ±Window of the
// receiver's clock, or whose (sender, nonce) it has already seen. Safe for
// concurrent use.
//
// What it keeps. Each (sender, nonce) becomes a 64-bit fingerprint, a
// hash keyed by a random secret drawn when the guard is made
// (hash/maphash: the keyed hash Go's maps rely on against hash flooding;
// not a MAC, but its seed and outputs never leave the guard), so no one
// can choose nonces that collide. The fingerprint is the key whatever
// the timestamp, as (sender, nonce) was before; it goes into the time bucket of the envelope's timestamp:
// buckets span a 32nd of the window. A bucket is forgotten whole once
// every timestamp in it has left the window, after which the timestamp
// check alone refuses those envelopes: a nonce is never forgotten while
// its envelope could still be accepted. A fingerprint is one 8-byte word
// in an open-addressing table (linear probing, at most 85 % full), with
// its bucket in the word's low 7 bits; the table is split into up to 128
// shards by the fingerprint's top bits, each with its own lock, and each
// shard removes a forgotten bucket's words in one pass the first time it
// is used after the bucket's time has passed. Tables grow as nonces come
// and shrink when they go, so an idle guard costs about 16 KiB.
//
// Collisions. Two different (sender, nonce) pairs with the same
// fingerprint make the guard take the second envelope for a replay of
// the first: an honest envelope is refused (replay) with probability
// about N/2^64 with N nonces held: 4·10⁻¹³ when full, one envelope in
// nine years at 10 000 a second. (A guard for fewer than 65 536 nonces
// has fewer shards and keeps 57 + log2(shards) bits, for its smaller N.)
// A collision cannot let a replay through: the same pair always has the
// same fingerprint, and the secret keeps anyone from aiming a collision at
// another sender's nonce or piling fingerprints into one probe run.
//
// Capacity and fairness. The guard holds at most maxEntries nonces, and
// nonces of at most DefaultReplaySenders senders. It never evicts: when
// it is full it refuses with back-pressure (CodeBusy, a *BusyError with
// the time until its oldest bucket leaves the window), not with a
// security refusal, and the sender is not to blame. Below the
// high-water mark (15/16 of the capacity) any sender is accepted, so a
// single sender may use all the room. Above it, a sender that holds its
// fair share or more, the capacity divided by the number of senders
// holding nonces, is refused, and the others are accepted until the
// guard is full. So a flooding insider (distinct nonces as fast as it
// can) fills the guard to the high-water mark and is then refused while
// an honest sender with a small share still gets in: the last 16th is
// for those under their share. Fewer than 15 flooders together cannot
// take it; more, each with a credential, could fill the guard, and then
// everyone waits for the oldest bucket. With maxPerSender > 0 a sender
// is also refused busy once it holds that many.
//
// Cost. Record takes a shard lock and then, briefly, the lock of the
// per-sender counts (lock ordering: replayShard.mu, then
// replayCounts.mu). A bucket leaving costs each shard one sequential
// pass over its table: 32 passes a window, 300–600 bytes read per
// envelope recorded (a quarter of the time Record takes). Memory is 8
// bytes a nonce in tables 42–85 % full (9.4–19 bytes a nonce), plus about
// 300 bytes a sender; at the default capacity the whole is at most
// DefaultReplayBytes.
type ReplayGuard struct {
	window       time.Duration
	span         int64 // nanoseconds a bucket spans
	capacity     int64 // nonces
	high         int64 // high-water mark: the fair-share rule starts here
	maxPerSender int64 // 0: no cap
	maxSenders   int
	seed         maphash.Seed

	shardShift uint // fingerprint >> shardShift is the shard
	shards     []replayShard
	// floor mirrors counts.floor (the oldest live bucket) for the shards,
	// which sweep up to it without taking the counts' lock.
	floor  atomic.Int64
	counts replayCounts
}

// replayShard is one part of the fingerprint table. Each word is the
// fingerprint shifted left by 7 with the bucket's tag in the low 7 bits.
type replayShard struct {
	mu       sync.Mutex
	slots    []uint64 // 0: empty
	n        int      // words held
	cap      int      // most words held
	maxSlots int      // largest table
	floor    int64    // buckets below it have been swept
	_        [64]byte // keep neighbouring shards' locks on other cache lines
}

// replayCounts counts the nonces held, per bucket and per sender, so that
// capacity and fair shares are known without walking the tables.
type replayCounts struct {
	mu       sync.Mutex
	started  bool
	floor    int64 // oldest live bucket
	total    int64
	perEpoch [replayLiveEpochs]int64 // bucket e at e mod replayLiveEpochs
	senders  map[trust.PublicKey]*replaySender
}

type replaySender struct {
	total    int64
	perEpoch [replayLiveEpochs]uint32
}

// NewReplayGuard returns a guard with the given window (0: DefaultWindow)
// that holds at most maxEntries nonces (0: DefaultReplayEntries, about 64
// MiB at most) and at most maxPerSender of one sender (0: no cap; see
// ReplayGuard for the fair-share rule that applies when it is nearly
// full). Memory grows with what is held, up to about 9.4 bytes a nonce of
// maxEntries plus 300 bytes a sender.
func NewReplayGuard(window time.Duration, maxEntries, maxPerSender int) *ReplayGuard {
	if window <= 0 {
		window = DefaultWindow
	}
	if maxEntries <= 0 {
		maxEntries = DefaultReplayEntries
	}
	maxEntries = min(maxEntries, math.MaxInt32)
	if maxPerSender < 0 || maxPerSender >= maxEntries {
		maxPerSender = 0
	}
	g := &ReplayGuard{
		window:       window,
		span:         (int64(window) + replayEpochsPerWindow - 1) / replayEpochsPerWindow,
		capacity:     int64(maxEntries),
		high:         int64(maxEntries) - int64(maxEntries)/16,
		maxPerSender: int64(maxPerSender),
		maxSenders:   min(DefaultReplaySenders, maxEntries),
		seed:         maphash.MakeSeed(),
	}
	shards := 1 << replayShardBits
	for shards > 1 && maxEntries/shards < replayShardEntries {
		shards /= 2
	}
	g.shardShift = uint(64 - bits.TrailingZeros(uint(shards)))
	// A shard's table grows to hold its share 85 % full. Shards fill
	// unevenly (a few standard deviations, 1 % of a default shard), so a
	// full-size table takes up to 95 %, and the capacity of the whole is
	// what refuses first.
	perShard := (maxEntries + shards - 1) / shards
	want := max(perShard+1, (perShard*100+replayMaxLoad-1)/replayMaxLoad)
	maxSlots := allocSlots(want)
	if down := want &^ 1023; down*8 > 32<<10 && down < maxSlots && perShard*100 <= down*88 {
		maxSlots = down // whole pages, a little fuller than 85 %, rather than most of a page unused
	}
	shardCap := max(perShard, min(maxSlots-1, maxSlots*95/100))
	g.shards = make([]replayShard, shards)
	for i := range g.shards {
		g.shards[i].cap, g.shards[i].maxSlots, g.shards[i].floor = shardCap, maxSlots, math.MinInt64
	}
	g.floor.Store(math.MinInt64)
	g.counts.senders = map[trust.PublicKey]*replaySender{}
	return g
}

// Window returns the replay window.
func (g *ReplayGuard) Window() time.Duration { return g.window }

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
	fp := g.fingerprint(sender, nonce)
	s := g.shard(fp)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(g.floor.Load())
	_, found := s.find(fp << replayShardBits)
	return found
}

// Record atomically checks and remembers (sender, nonce) for an envelope
// stamped ts. Call it only for an envelope that passed every other check.
// It refuses a timestamp outside the window (CodeStale), a nonce seen
// before (CodeReplay), and, when the guard is full or the sender holds
// more than its share of a nearly full guard, with back-pressure
// (CodeBusy, a *BusyError).
func (g *ReplayGuard) Record(sender trust.PublicKey, nonce []byte, ts, now time.Time) error {
	floor := g.advance(now)
	if err := g.CheckTime(ts, now); err != nil {
		return err
	}
	e := floorDiv(ts.UnixNano(), g.span)
	if e < floor {
		return g.staleByLatest(ts)
	}
	fp := g.fingerprint(sender, nonce)
	w := fp<<replayShardBits | tagOf(e)
	s := g.shard(fp)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(floor)
	i, found := s.find(w)
	if found {
		return Reject(CodeReplay, "nonce already seen from %s", sender)
	}
	if s.n >= s.cap {
		g.counts.mu.Lock()
		defer g.counts.mu.Unlock()
		return g.busyLocked(nil, now, "the replay guard is full (%d nonces of %d)", g.counts.total, g.capacity)
	}
	if err := g.admit(sender, e, ts, now); err != nil {
		return err
	}
	if len(s.slots) == 0 || (s.n+1)*100 > len(s.slots)*replayMaxLoad && len(s.slots) < s.maxSlots {
		s.resize(min(s.maxSlots, max(replayMinShardSlots, 2*len(s.slots))))
		i, _ = s.find(w)
	}
	s.slots[i] = w
	s.n++
	return nil
}

// Len returns the number of remembered nonces (as of the latest clock
// reading: buckets that have left the window are not counted).
func (g *ReplayGuard) Len() int {
	g.counts.mu.Lock()
	defer g.counts.mu.Unlock()
	return int(g.counts.total)
}

// advance moves the oldest live bucket up to now's and forgets the
// counts of the buckets that left the window. It returns the oldest live
// bucket, which a clock reading earlier than the latest does not move
// back.
func (g *ReplayGuard) advance(now time.Time) int64 {
	f := floorDiv(now.UnixNano()-int64(g.window), g.span)
	if f <= g.floor.Load() {
		return g.floor.Load()
	}
	c := &g.counts
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.started:
		c.started, c.floor = true, f
	case f <= c.floor:
	case f-c.floor >= replayLiveEpochs:
		c.total, c.perEpoch = 0, [replayLiveEpochs]int64{}
		clear(c.senders)
		c.floor = f
	default:
		for e := c.floor; e < f; e++ {
			k := ringIndex(e)
			c.total -= c.perEpoch[k]
			c.perEpoch[k] = 0
		}
		for s, a := range c.senders {
			for e := c.floor; e < f; e++ {
				k := ringIndex(e)
				a.total -= int64(a.perEpoch[k])
				a.perEpoch[k] = 0
			}
			if a.total == 0 {
				delete(c.senders, s)
			}
		}
		c.floor = f
	}
	g.floor.Store(c.floor)
	return c.floor
}

// admit counts a nonce of sender in bucket e, or refuses it busy. Called
// with the nonce's shard locked.
func (g *ReplayGuard) admit(sender trust.PublicKey, e int64, ts, now time.Time) error {
	c := &g.counts
	c.mu.Lock()
	defer c.mu.Unlock()
	if e < c.floor {
		return g.staleByLatest(ts)
	}
	a := c.senders[sender]
	var held int64
	if a != nil {
		held = a.total
	}
	switch {
	case g.maxPerSender > 0 && held >= g.maxPerSender:
		return g.busyLocked(a, now, "the replay guard holds %d nonces of this sender, its per-sender limit", held)
	case c.total >= g.capacity:
		return g.busyLocked(nil, now, "the replay guard is full (%d nonces)", c.total)
	case c.total >= g.high:
		n := int64(len(c.senders))
		if a == nil {
			n++
		}
		if fair := g.capacity / n; held >= fair {
			return g.busyLocked(a, now, "the replay guard is %d%% full and this sender holds %d of its nonces, its fair share or more (%d, %d senders)",
				c.total*100/g.capacity, held, fair, n)
		}
	}
	if a == nil {
		if len(c.senders) >= g.maxSenders {
			return g.busyLocked(nil, now, "the replay guard holds nonces of %d senders, its limit", len(c.senders))
		}
		a = &replaySender{}
		c.senders[sender] = a
	}
	k := ringIndex(e)
	a.total++
	a.perEpoch[k]++
	c.perEpoch[k]++
	c.total++
	return nil
}

// busyLocked returns a busy refusal that asks the caller to come back when
// the oldest bucket holding nonces (of a, or of anyone when a is nil)
// leaves the window. Called with g.counts.mu held.
func (g *ReplayGuard) busyLocked(a *replaySender, now time.Time, format string, args ...any) error {
	c := &g.counts
	after := time.Duration(g.span)
	for e := c.floor; e < c.floor+replayLiveEpochs; e++ {
		k := ringIndex(e)
		if (a == nil && c.perEpoch[k] > 0) || (a != nil && a.perEpoch[k] > 0) {
			after = time.Duration((e+1)*g.span+int64(g.window)-now.UnixNano()) + time.Millisecond
			break
		}
	}
	return Busy(max(after, time.Millisecond), format, args...)
}

func (g *ReplayGuard) staleByLatest(ts time.Time) error {
	return Reject(CodeStale, "timestamp %s has left the %s window by this node's latest clock reading", ts.UTC().Format(time.RFC3339Nano), g.window)
}

func (g *ReplayGuard) fingerprint(sender trust.PublicKey, nonce []byte) uint64 {
	if len(nonce) == 16 {
		var b [trust.PublicKeySize + 16]byte
		copy(b[:], sender[:])
		copy(b[trust.PublicKeySize:], nonce)
		return maphash.Bytes(g.seed, b[:])
	}
	var h maphash.Hash
	h.SetSeed(g.seed)
	h.Write(sender[:])
	h.Write(nonce)
	return h.Sum64()
}

func (g *ReplayGuard) shard(fp uint64) *replayShard {
	if len(g.shards) == 1 {
		return &g.shards[0]
	}
	return &g.shards[fp>>g.shardShift]
}

// find returns the slot holding w's fingerprint (whatever its tag), or
// the empty slot where it would go. The table always has an empty slot.
func (s *replayShard) find(w uint64) (int, bool) {
	n := len(s.slots)
	if n == 0 {
		return -1, false
	}
	key := w &^ replayTagMask
	for i := home(w, n); ; {
		x := s.slots[i]
		if x == 0 {
			return i, false
		}
		if x&^replayTagMask == key {
			return i, true
		}
		if i++; i == n {
			i = 0
		}
	}
}

// sweep removes the words of buckets below floor. The shard holds
// buckets in [s.floor, s.floor+replayLiveEpochs) only: a word is written
// after its shard was swept to a floor at most 65 buckets below its own,
// and never below the counts' floor, which is at least the shard's.
func (s *replayShard) sweep(floor int64) {
	if floor <= s.floor {
		return
	}
	old := s.floor
	s.floor = floor
	if s.n == 0 {
		s.shrink()
		return
	}
	if floor-old >= replayLiveEpochs {
		clear(s.slots)
		s.n = 0
		s.shrink()
		return
	}
	// Bit t of dead: tag t is of a bucket below floor. Tag 0 (an empty
	// slot) never is, so the scan has one branch a slot, rarely taken.
	var dead [2]uint64
	for e := old; e < floor; e++ {
		t := tagOf(e)
		dead[t>>6] |= 1 << (t & 63)
	}
	slots := s.slots
	for i := 0; i < len(slots); i++ {
		for w := slots[i]; dead[w>>6&1]>>(w&63)&1 != 0; w = slots[i] {
			s.deleteAt(i)
			s.n--
		}
	}
	s.shrink()
}

// deleteAt empties slot i and moves back the words after it that may not
// sit past an empty slot (Knuth's algorithm R for linear probing). A
// word moved into i was either already passed by a sweep (and kept) or
// is looked at again, since the sweep rereads slot i.
func (s *replayShard) deleteAt(i int) {
	n := len(s.slots)
	for j := i; ; {
		if j++; j == n {
			j = 0
		}
		w := s.slots[j]
		if w == 0 {
			break
		}
		h := home(w, n)
		// w stays when its home lies cyclically in (i, j].
		if i <= j {
			if i < h && h <= j {
				continue
			}
		} else if i < h || h <= j {
			continue
		}
		s.slots[i] = w
		i = j
	}
	s.slots[i] = 0
}

// shrink halves the table while it would stay under a quarter full.
func (s *replayShard) shrink() {
	n := len(s.slots)
	for n/2 >= replayMinShardSlots && s.n*8 < n {
		n /= 2
	}
	if s.n == 0 {
		n = 0
	}
	if n != len(s.slots) {
		s.resize(n)
	}
}

func (s *replayShard) resize(n int) {
	old := s.slots
	if n == 0 {
		s.slots = nil
		return
	}
	s.slots = make([]uint64, allocSlots(n))
	n = len(s.slots)
	for _, w := range old {
		if w == 0 {
			continue
		}
		i := home(w, n)
		for s.slots[i] != 0 {
			if i++; i == n {
				i = 0
			}
		}
		s.slots[i] = w
	}
}

// allocSlots rounds n up to what its allocation holds anyway (Go rounds
// a small allocation up to its size class, a large one to whole pages).
func allocSlots(n int) int {
	return cap(slices.Grow([]uint64(nil), n))
}

// bytes is the memory the guard holds: its tables and per-sender counts.
func (g *ReplayGuard) bytes() int {
	b := len(g.shards) * int(unsafe.Sizeof(replayShard{}))
	for i := range g.shards {
		s := &g.shards[i]
		s.mu.Lock()
		b += 8 * len(s.slots)
		s.mu.Unlock()
	}
	g.counts.mu.Lock()
	b += len(g.counts.senders) * replaySenderBytes
	g.counts.mu.Unlock()
	return b
}

// home is a word's first slot in a table of n: the high bits of its
// fingerprint bits times n (no power of two needed).
func home(w uint64, n int) int {
	hi, _ := bits.Mul64(w&^replayTagMask, uint64(n))
	return int(hi)
}

func tagOf(e int64) uint64 {
	return uint64((e%replayTags+replayTags)%replayTags) + 1
}

func ringIndex(e int64) int {
	return int((e%replayLiveEpochs + replayLiveEpochs) % replayLiveEpochs)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
