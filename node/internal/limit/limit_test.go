package limit

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// long is an interval no bucket refills in while a test runs.
const long = time.Hour

// A bucket gives burst tokens at once and then refuses; Left and Spent
// follow it without spending.
func TestBurstThenRefuse(t *testing.T) {
	for _, burst := range []int{1, 3, 8} {
		t.Run(fmt.Sprint(burst), func(t *testing.T) {
			l := New(long, burst)
			if l.Left("k") != burst || l.Spent("k") {
				t.Fatalf("fresh key: left %d, spent %v", l.Left("k"), l.Spent("k"))
			}
			for i := range burst {
				if !l.Allow("k") {
					t.Fatalf("token %d of %d refused", i+1, burst)
				}
				if got := l.Left("k"); got != burst-i-1 {
					t.Fatalf("after %d: left %d, want %d", i+1, got, burst-i-1)
				}
			}
			if l.Allow("k") || !l.Spent("k") || l.Left("k") != 0 {
				t.Fatalf("past the burst: allowed, or left %d", l.Left("k"))
			}
		})
	}
}

// Keys have their own buckets: spending one leaves the others full.
func TestKeysIndependent(t *testing.T) {
	l := New(long, 2)
	l.AllowN("a", 2)
	if l.Allow("a") {
		t.Fatal("a allowed past its burst")
	}
	if !l.Allow("b") || l.Left("b") != 1 {
		t.Fatalf("b charged for a: left %d", l.Left("b"))
	}
}

// AllowN spends all n tokens or none.
func TestAllowNAllOrNothing(t *testing.T) {
	for _, tc := range []struct {
		burst, spend, n int
		ok              bool
		left            int
	}{
		{burst: 4, spend: 0, n: 4, ok: true, left: 0},
		{burst: 4, spend: 1, n: 4, ok: false, left: 3},
		{burst: 4, spend: 0, n: 5, ok: false, left: 4}, // more than a bucket holds
		{burst: 4, spend: 2, n: 2, ok: true, left: 0},
		{burst: 4, spend: 0, n: 0, ok: true, left: 4},
	} {
		t.Run(fmt.Sprintf("%+v", tc), func(t *testing.T) {
			l := New(long, tc.burst)
			l.AllowN("k", tc.spend)
			if ok := l.AllowN("k", tc.n); ok != tc.ok || l.Left("k") != tc.left {
				t.Fatalf("AllowN(%d): %v, left %d; want %v, left %d", tc.n, ok, l.Left("k"), tc.ok, tc.left)
			}
		})
	}
}

// Left and Spent of an unknown key make no bucket.
func TestLeftDoesNotAdd(t *testing.T) {
	l := New(long, 2)
	_ = l.Left("x")
	_ = l.Spent("y")
	if n := len(l.m); n != 0 {
		t.Fatalf("%d buckets after reads only", n)
	}
}

// Past maxLimiters keys, a new key forgets the buckets that are full
// (nothing to remember), and never a spent one: forgetting it would hand
// its key a fresh burst.
func TestBoundForgetsOnlyFullBuckets(t *testing.T) {
	l := New(long, 2)
	l.Allow("spent") // one token short: kept
	for i := range maxLimiters - 1 {
		l.AllowN(fmt.Sprint("full", i), 0) // a bucket, still full
	}
	if len(l.m) != maxLimiters {
		t.Fatalf("%d buckets, want %d", len(l.m), maxLimiters)
	}
	l.Allow("new")
	if len(l.m) != 2 {
		t.Fatalf("after a new key at the bound: %d buckets, want 2 (spent and new)", len(l.m))
	}
	if l.Left("spent") != 1 {
		t.Fatalf("the spent bucket was forgotten: left %d", l.Left("spent"))
	}
}

// When every bucket is spent the map grows past maxLimiters rather than
// forgetting one: the bound is kept only by buckets that refilled.
func TestBoundKeepsSpentBuckets(t *testing.T) {
	l := New(long, 1)
	for i := range maxLimiters + 10 {
		l.Allow(fmt.Sprint(i))
	}
	if len(l.m) != maxLimiters+10 {
		t.Fatalf("%d buckets, want %d", len(l.m), maxLimiters+10)
	}
	if l.Allow("0") {
		t.Fatal("a spent bucket was refilled by forgetting it")
	}
}

// Concurrent spenders never get more than burst tokens of one key.
func TestConcurrentSpendBounded(t *testing.T) {
	const burst, workers = 16, 8
	l := New(long, burst)
	var mu sync.Mutex
	got := 0
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range burst {
				if l.Allow("k") {
					mu.Lock()
					got++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if got != burst {
		t.Fatalf("%d tokens spent, want %d", got, burst)
	}
}
