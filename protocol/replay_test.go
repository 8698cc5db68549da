package protocol

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"math"
	mrand "math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// replayLong reports whether the guard's long simulations run at full
// scale (millions of envelopes, a few seconds); under -race or -short
// they run scaled down.
func replayLong() bool { return !replayRaceEnabled && !testing.Short() }

func senderKey(i int) trust.PublicKey {
	var k trust.PublicKey
	binary.LittleEndian.PutUint64(k[:], uint64(i)+1)
	k[31] = 0x5a
	return k
}

// counterNonce is nonce number i of a sender, as distinct as random ones.
func counterNonce(b *[16]byte, i uint64) []byte {
	binary.LittleEndian.PutUint64(b[:8], i)
	binary.LittleEndian.PutUint64(b[8:], ^i*0x9e3779b97f4a7c15)
	return b[:]
}

func randomNonce(t testing.TB) []byte {
	n := make([]byte, 16)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// A replay is refused for as long as its timestamp is inside the window,
// wherever in ±window the timestamp was, and is stale afterwards.
func TestReplayGuardRefusesReplaysAcrossTheWindow(t *testing.T) {
	t.Parallel()
	const W = DefaultWindow
	g := NewReplayGuard(0, 0, 0)
	alice := senderKey(1)
	type sent struct {
		nonce []byte
		ts    time.Time
	}
	var all []sent
	for _, off := range []time.Duration{-W, -W + time.Millisecond, -W / 2, -time.Second, 0, time.Nanosecond, time.Second, W / 3, W - time.Millisecond, W} {
		s := sent{randomNonce(t), t0.Add(off)}
		if err := g.Record(alice, s.nonce, s.ts, t0); err != nil {
			t.Fatalf("offset %s: %v", off, err)
		}
		all = append(all, s)
	}
	var checks []time.Time
	for d := time.Duration(0); d <= 2*W+time.Minute; d += W / 97 {
		checks = append(checks, t0.Add(d))
	}
	for _, s := range all { // the last instants inside, the first outside
		checks = append(checks, s.ts.Add(W), s.ts.Add(W+time.Nanosecond))
	}
	slices.SortFunc(checks, time.Time.Compare)
	for _, now := range checks {
		for _, s := range all {
			err := g.Record(alice, s.nonce, s.ts, now)
			if now.Sub(s.ts) <= W {
				if !errors.Is(err, ErrReplay) {
					t.Fatalf("replay of %s at %s: want replay, got %v", s.ts.Sub(t0), now.Sub(t0), err)
				}
				if !g.Seen(alice, s.nonce) {
					t.Fatalf("nonce of %s not seen at %s", s.ts.Sub(t0), now.Sub(t0))
				}
			} else if !errors.Is(err, ErrStale) {
				t.Fatalf("replay of %s at %s: want stale, got %v", s.ts.Sub(t0), now.Sub(t0), err)
			}
		}
	}
	if g.Len() != 0 {
		t.Fatalf("%d nonces held after every timestamp left the window", g.Len())
	}
}

// A model check: random envelopes with timestamps anywhere in the window,
// in any order, replays of random earlier ones, the clock moving on. Every
// nonce whose timestamp is inside the window is remembered (the tables'
// deletions never lose a live one), every nonce is forgotten a bucket after
// its timestamp left the window, and Len counts exactly the live buckets.
// The guard is small, so its tables wrap, grow and shrink.
func TestReplayGuardForgetsOnlyAfterTheWindow(t *testing.T) {
	t.Parallel()
	const W = time.Minute
	g := NewReplayGuard(W, 20_000, 0)
	if len(g.shards) < 8 {
		t.Fatalf("%d shards: the model check wants several", len(g.shards))
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	type sent struct {
		sender trust.PublicKey
		nonce  []byte
		ts     time.Time
	}
	var live []sent
	now := t0
	steps := 1500
	if !replayLong() {
		steps = 300
	}
	var accepted, replays, stales int
	for step := 0; step < steps; step++ {
		now = now.Add(time.Duration(rng.Int64N(int64(W / 12))))
		for range 1 + rng.IntN(40) {
			s := sent{senderKey(rng.IntN(5)), randomNonce(t), now.Add(time.Duration(rng.Int64N(int64(2*W+1))) - W)}
			if err := g.Record(s.sender, s.nonce, s.ts, now); err != nil {
				t.Fatalf("step %d: fresh envelope: %v", step, err)
			}
			accepted++
			live = append(live, s)
		}
		for range rng.IntN(10) {
			if len(live) == 0 {
				break
			}
			s := live[rng.IntN(len(live))]
			err := g.Record(s.sender, s.nonce, s.ts, now)
			if now.Sub(s.ts) <= W {
				if !errors.Is(err, ErrReplay) {
					t.Fatalf("step %d: replay inside the window: %v", step, err)
				}
				replays++
			} else {
				if !errors.Is(err, ErrStale) {
					t.Fatalf("step %d: replay outside the window: %v", step, err)
				}
				stales++
			}
		}
		// What the guard must still hold, and what it must have let go.
		floor := floorDiv(now.Add(-W).UnixNano(), g.span)
		kept, held := live[:0], 0
		for _, s := range live {
			inBucket := floorDiv(s.ts.UnixNano(), g.span) >= floor
			seen := g.Seen(s.sender, s.nonce)
			switch {
			case now.Sub(s.ts) <= W && !seen:
				t.Fatalf("step %d: a nonce %s old, inside the window, was forgotten", step, now.Sub(s.ts))
			case !inBucket && seen:
				t.Fatalf("step %d: a nonce %s old, its bucket gone, is still held", step, now.Sub(s.ts))
			}
			if inBucket {
				kept = append(kept, s)
				held++
			}
		}
		live = kept
		if g.Len() != held {
			t.Fatalf("step %d: Len %d, want %d", step, g.Len(), held)
		}
	}
	t.Logf("%d accepted, %d replays and %d stale replays refused, %d held at the end", accepted, replays, stales, len(live))
}

// A sender that restarts draws new random nonces: they are accepted, and
// its envelopes from before the restart are still refused as replays.
func TestReplayGuardSenderRestart(t *testing.T) {
	t.Parallel()
	g := NewReplayGuard(0, 0, 0)
	alice := senderKey(1)
	type sent struct {
		nonce []byte
		ts    time.Time
	}
	var before []sent
	now := t0
	for i := range 2000 {
		now = t0.Add(time.Duration(i) * 50 * time.Millisecond)
		s := sent{randomNonce(t), now}
		if err := g.Record(alice, s.nonce, s.ts, now); err != nil {
			t.Fatal(err)
		}
		before = append(before, s)
	}
	// The restarted process, its clock now 20 s ahead of ours.
	for i := range 2000 {
		now = now.Add(10 * time.Millisecond)
		if err := g.Record(alice, randomNonce(t), now.Add(20*time.Second), now); err != nil {
			t.Fatalf("call %d after the restart: %v", i, err)
		}
	}
	for _, s := range before {
		if err := g.Record(alice, s.nonce, s.ts, now); !errors.Is(err, ErrReplay) {
			t.Fatalf("an envelope from before the restart, replayed: want replay, got %v", err)
		}
	}
}

// Pubsub reorders: envelopes of many senders with timestamps all over the
// window arrive shuffled, each twice (two forwarders): the first copy is
// accepted whatever the order, the second refused.
func TestReplayGuardOutOfOrder(t *testing.T) {
	t.Parallel()
	const W = DefaultWindow
	g := NewReplayGuard(0, 0, 0)
	rng := mrand.New(mrand.NewPCG(3, 4))
	type sent struct {
		sender trust.PublicKey
		nonce  []byte
		ts     time.Time
	}
	var msgs []sent
	now := t0.Add(4 * time.Minute)
	for i := range 5000 {
		// Sent over the last 4 minutes by senders whose clocks are from a
		// minute behind ours to a full window ahead.
		skew := -W/5 + time.Duration(i%13)*(6*W/5)/12
		delay := time.Duration(rng.Int64N(int64(4 * time.Minute)))
		msgs = append(msgs, sent{senderKey(i % 37), randomNonce(t), now.Add(skew - delay)})
	}
	deliveries := append(append([]sent{}, msgs...), msgs...)
	rng.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
	first := map[*byte]bool{}
	for _, d := range deliveries {
		err := g.Record(d.sender, d.nonce, d.ts, now)
		if !first[&d.nonce[0]] {
			first[&d.nonce[0]] = true
			if err != nil {
				t.Fatalf("first copy refused: %v", err)
			}
		} else if !errors.Is(err, ErrReplay) {
			t.Fatalf("second copy: want replay, got %v", err)
		}
	}
	if g.Len() != len(msgs) {
		t.Fatalf("Len %d, want %d", g.Len(), len(msgs))
	}
}

// The capacity, the per-sender cap and the sender limit refuse busy, with
// a retry-after that is when the oldest bucket leaves the window; then
// there is room again. (Before the fingerprint guard these were
// replay_full.)
func TestReplayGuardBounds(t *testing.T) {
	t.Parallel()
	const W = time.Minute
	g := NewReplayGuard(W, 4, 2)
	alice, bob, carol := senderKey(1), senderKey(2), senderKey(3)
	n := func(i byte) []byte { return []byte{i, i, i, i, i, i, i, i, i, i, i, i, i, i, i, i} }
	for i := byte(1); i <= 2; i++ {
		if err := g.Record(alice, n(i), t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	busy := func(err error, what string) time.Duration {
		t.Helper()
		d, ok := RetryAfter(err)
		if !ok || code(err) != CodeBusy {
			t.Fatalf("%s: want busy, got %v", what, err)
		}
		return d
	}
	d := busy(g.Record(alice, n(3), t0, t0), "per-sender cap")
	// The bucket of t0 leaves the window at most a bucket (W/32) after t0+W.
	if d <= W || d > W+W/32+2*time.Millisecond {
		t.Fatalf("retry after %s, want just over %s", d, W)
	}
	// bob's timestamps are two buckets later than alice's.
	tb := t0.Add(W / 16)
	for i := byte(4); i < 6; i++ {
		if err := g.Record(bob, n(i), tb, tb); err != nil {
			t.Fatal(err)
		}
	}
	busy(g.Record(carol, n(9), tb, tb), "capacity")
	// A replay is still a replay when full.
	if err := g.Record(bob, n(4), tb, tb); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay when full: %v", err)
	}
	// Retry when told: alice's bucket has left the window, bob's not.
	later := t0.Add(d)
	if err := g.Record(carol, n(9), later, later); err != nil {
		t.Fatalf("after the retry-after: %v", err)
	}
	if g.Len() != 3 {
		t.Fatalf("Len %d, want 3 (bob's two and carol's)", g.Len())
	}
	if err := g.Record(bob, n(4), tb, later); !errors.Is(err, ErrReplay) {
		t.Fatalf("bob's nonce forgotten early: %v", err)
	}
}

// Nonces of at most maxSenders senders are held: a further sender waits
// (busy) while those already holding some go on.
func TestReplayGuardSenderLimit(t *testing.T) {
	t.Parallel()
	g := NewReplayGuard(time.Minute, 4096, 0)
	g.maxSenders = 3
	var b [16]byte
	for i := range 3 {
		if err := g.Record(senderKey(i), counterNonce(&b, 1), t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := RetryAfter(g.Record(senderKey(3), counterNonce(&b, 1), t0, t0)); !ok {
		t.Fatal("a fourth sender was admitted")
	}
	if err := g.Record(senderKey(0), counterNonce(&b, 2), t0, t0); err != nil {
		t.Fatalf("a holding sender: %v", err)
	}
	later := t0.Add(2 * time.Minute)
	if err := g.Record(senderKey(3), counterNonce(&b, 1), later, later); err != nil {
		t.Fatalf("once the others' nonces left the window: %v", err)
	}
}

// The flooding insider: one credentialed sender sends distinct nonces as
// fast as it can (a million a second of simulated time). It fills the
// guard to the high-water mark and is then refused busy, while an honest
// sender with a small share, and a sender that was not there before the
// flood, always get in; the memory stays within the bound. Not parallel:
// it measures the process's heap.
func TestReplayGuardFloodingInsider(t *testing.T) {
	capacity, bound := DefaultReplayEntries, DefaultReplayBytes
	if !replayLong() { // 10 bytes a nonce and 256 KiB
		capacity, bound = 1<<17, 1<<17*10+256<<10
	}
	base := heapInUse()
	g := NewReplayGuard(0, capacity, 0)
	flooder, honest, newcomer := senderKey(66), senderKey(1), senderKey(2)
	var b [16]byte
	now := t0
	var accepted, refused, honestCalls int
	var retry time.Duration
	for i := uint64(0); i < uint64(capacity)*11/10; i++ {
		now = now.Add(time.Microsecond)
		err := g.Record(flooder, counterNonce(&b, i), now.Add(DefaultWindow), now)
		if err == nil {
			accepted++
		} else if d, ok := RetryAfter(err); ok {
			refused++
			retry = d
		} else {
			t.Fatalf("flood envelope %d: %v", i, err)
		}
		if i%1000 == 0 { // the honest sender: 1 000 a second
			honestCalls++
			if err := g.Record(honest, randomNonce(t), now, now); err != nil {
				t.Fatalf("honest call %d during the flood: %v", honestCalls, err)
			}
		}
	}
	if refused == 0 || int64(accepted) < g.high-int64(honestCalls) || int64(accepted) > g.high {
		t.Fatalf("flooder: %d accepted, %d refused; want refusals from the high-water mark %d", accepted, refused, g.high)
	}
	// It is told to come back when its oldest bucket leaves the window:
	// its timestamps were a window ahead, so two windows from the start.
	if elapsed := now.Sub(t0); retry < 2*DefaultWindow-elapsed-time.Second || retry > 2*DefaultWindow+DefaultWindow/32 {
		t.Fatalf("retry after %s", retry)
	}
	// The room above the mark is for the others, newcomers included.
	for i := range 1000 {
		if err := g.Record(newcomer, randomNonce(t), now, now); err != nil {
			t.Fatalf("newcomer call %d: %v", i, err)
		}
	}
	used, heap := g.bytes(), heapInUse()-base
	t.Logf("%d nonces held (capacity %d): %d flood accepted, %d refused, %d honest; %.1f MiB counted, %.1f MiB of heap (bound %.0f MiB), %.1f B a nonce",
		g.Len(), capacity, accepted, refused, honestCalls, float64(used)/(1<<20), float64(heap)/(1<<20), float64(bound)/(1<<20), float64(heap)/float64(g.Len()))
	if used > bound || heap > uint64(bound) {
		t.Fatalf("memory %d counted, %d of heap, over the bound %d", used, heap, bound)
	}
	runtime.KeepAlive(g)
}

// Several flooders (fewer than 15) cannot take the room above the
// high-water mark either: each holds more than capacity / senders.
func TestReplayGuardSeveralFlooders(t *testing.T) {
	t.Parallel()
	const capacity = 1 << 14
	g := NewReplayGuard(0, capacity, 0)
	var b [16]byte
	now := t0
	honest := senderKey(100)
	for i := uint64(0); i < 4*capacity; i++ {
		now = now.Add(time.Microsecond)
		err := g.Record(senderKey(int(i%5)), counterNonce(&b, i), now, now)
		if _, busy := RetryAfter(err); err != nil && !busy {
			t.Fatal(err)
		}
		if i%500 == 0 {
			if err := g.Record(honest, randomNonce(t), now, now); err != nil {
				t.Fatalf("honest call at flood envelope %d: %v", i, err)
			}
		}
	}
	if int64(g.Len()) > g.high+int64(4*capacity/500)+1 {
		t.Fatalf("%d held: the flooders went past the high-water mark %d", g.Len(), g.high)
	}
}

// The sizing goal: 10 000 accepted envelopes a second for 10 minutes with
// the production window, every sender's clock a full window ahead (so
// every nonce is held for two windows), never refused, in at most
// DefaultReplayBytes: eight senders of which one sends 70 %. Scaled down
// (1 000 a second against a tenth of the capacity), the same with one
// sender at the full rate; under -race or -short only the scaled runs.
// Not parallel, nor its runs: each measures the process's heap.
func TestReplayGuardSustainsTenThousandASecond(t *testing.T) {
	type run struct {
		name                    string
		senders, rate, capacity int
		bound                   int // bytes
	}
	// Scaled: 10 bytes a nonce and 256 KiB.
	small := DefaultReplayEntries / 10
	runs := []run{
		{"one sender/scaled", 1, 1_000, small, small*10 + 256<<10},
		{"eight senders/scaled", 8, 1_000, small, small*10 + 256<<10},
	}
	if replayLong() {
		runs = append(runs, run{"eight senders", 8, 10_000, DefaultReplayEntries, DefaultReplayBytes})
	}
	for _, r := range runs {
		senders, rate, capacity, bound := r.senders, r.rate, r.capacity, r.bound
		t.Run(r.name, func(t *testing.T) {
			base := heapInUse()
			g := NewReplayGuard(DefaultWindow, capacity, 0)
			var b [16]byte
			step := time.Second / time.Duration(rate)
			now, most := t0, 0
			for i := range uint64(10 * 60 * rate) {
				now = now.Add(step)
				s := 0
				if senders > 1 && i%10 >= 7 {
					s = 1 + int(i%uint64(senders-1))
				}
				if err := g.Record(senderKey(s), counterNonce(&b, i), now.Add(DefaultWindow), now); err != nil {
					t.Fatalf("envelope %d (%s in): %v", i, now.Sub(t0), err)
				}
				if i%4096 == 0 {
					most = max(most, g.Len())
				}
			}
			used, heap := g.bytes(), heapInUse()-base
			t.Logf("%d a second for 10 minutes: %d held at most (capacity %d, high-water %d); %.1f MiB counted, %.1f MiB of heap, %.1f B a nonce",
				rate, most, capacity, g.high, float64(used)/(1<<20), float64(heap)/(1<<20), float64(heap)/float64(g.Len()))
			if used > bound || heap > uint64(bound) {
				t.Fatalf("memory %d counted, %d of heap, over %d", used, heap, bound)
			}
			runtime.KeepAlive(g)
		})
	}
}

// Tables shrink once their nonces left the window: an idle guard costs
// little however busy it was.
func TestReplayGuardShrinks(t *testing.T) {
	t.Parallel()
	g := NewReplayGuard(0, 0, 0)
	idle := g.bytes()
	var b [16]byte
	for i := range uint64(200_000) {
		if err := g.Record(senderKey(int(i%7)), counterNonce(&b, i), t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	full := g.bytes()
	later := t0.Add(3 * DefaultWindow)
	if err := g.Record(senderKey(1), counterNonce(&b, 1), later, later); err != nil {
		t.Fatal(err)
	}
	for i := range uint64(1 << 12) { // touch every shard
		g.Seen(senderKey(1), counterNonce(&b, i))
	}
	t.Logf("idle %d B, 200 000 nonces %d B, after %d B", idle, full, g.bytes())
	if idle > 32<<10 || g.bytes() > idle+8<<10 {
		t.Fatalf("idle %d B, %d B once the nonces left the window", idle, g.bytes())
	}
}

// Two callers' clocks differ a little (each Record reads its own now): an
// envelope that the later clock already puts out of the window is refused
// stale; everything else works as usual.
func TestReplayGuardClockReadingsOutOfOrder(t *testing.T) {
	t.Parallel()
	const W = time.Minute
	g := NewReplayGuard(W, 0, 0)
	alice := senderKey(1)
	late := t0.Add(W)
	if err := g.Record(alice, randomNonce(t), late, late); err != nil {
		t.Fatal(err)
	}
	// ts, the last instant of the bucket before t0's, is inside the window
	// by the reading early, but its bucket left it by the reading late.
	ts := time.Unix(0, floorDiv(t0.UnixNano(), g.span)*g.span-1)
	early := ts.Add(W)
	if err := g.Record(alice, randomNonce(t), ts, early); !errors.Is(err, ErrStale) {
		t.Fatalf("want stale by the latest clock, got %v", err)
	}
	n := randomNonce(t)
	if err := g.Record(alice, n, early, early); err != nil {
		t.Fatal(err)
	}
	if err := g.Record(alice, n, early, late); !errors.Is(err, ErrReplay) {
		t.Fatalf("want replay, got %v", err)
	}
}

// Many goroutines at once: each nonce is accepted exactly once, however
// many race for it.
func TestReplayGuardConcurrent(t *testing.T) {
	t.Parallel()
	g := NewReplayGuard(0, 0, 0)
	const workers, own, shared = 8, 3000, 1000
	var wins atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [16]byte
			now := t0
			for i := range uint64(own) {
				now = now.Add(time.Millisecond)
				if err := g.Record(senderKey(w), counterNonce(&b, i), now, now); err != nil {
					t.Error(err)
					return
				}
				if i < shared {
					err := g.Record(senderKey(99), counterNonce(&b, i), t0, now)
					if err == nil {
						wins.Add(1)
					} else if !errors.Is(err, ErrReplay) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if wins.Load() != shared || g.Len() != workers*own+shared {
		t.Fatalf("%d shared nonces accepted (want %d), %d held (want %d)", wins.Load(), shared, g.Len(), workers*own+shared)
	}
}

// The table alone: words of random buckets go in, buckets are swept away
// in order, and after every sweep each word of a live bucket is still
// found (deletions move words back over the hole, across the table's end
// too) and no word of a swept one is.
func TestReplayShardSweepKeepsEveryLiveWord(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(5, 6))
	for round := range 200 {
		s := &replayShard{cap: 55, maxSlots: 64, floor: math.MinInt64}
		floor := int64(1000 + round)
		s.sweep(floor)
		words := map[uint64]int64{} // fingerprint bits -> bucket
		for step := range 40 {
			for range rng.IntN(12) {
				if s.n >= s.cap {
					break
				}
				e := floor + rng.Int64N(replayLiveEpochs)
				fp := rng.Uint64() << replayShardBits
				if len(s.slots) == 0 || (s.n+1)*100 > len(s.slots)*replayMaxLoad && len(s.slots) < s.maxSlots {
					s.resize(min(s.maxSlots, max(replayMinShardSlots, 2*len(s.slots))))
				}
				i, found := s.find(fp)
				if found {
					t.Fatal("a random fingerprint found")
				}
				s.slots[i] = fp | tagOf(e)
				s.n++
				words[fp] = e
			}
			floor += rng.Int64N(3)
			s.sweep(floor)
			live := 0
			for fp, e := range words {
				_, found := s.find(fp)
				switch {
				case e >= floor && !found:
					t.Fatalf("round %d step %d: a word of bucket %d (floor %d) lost", round, step, e, floor)
				case e < floor && found:
					t.Fatalf("round %d step %d: a word of bucket %d kept (floor %d)", round, step, e, floor)
				case e < floor:
					delete(words, fp)
				default:
					live++
				}
			}
			if s.n != live {
				t.Fatalf("round %d step %d: n %d, want %d", round, step, s.n, live)
			}
		}
	}
}
