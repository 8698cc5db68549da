// Package limit holds token buckets by key: what a peer or an agent may
// make a node do (answers, records, renewals, refusals) at once and per
// interval, in bounded memory.
package limit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Keyed is a set of token buckets by key (a peer and a protocol, an
// agent): burst at once and one every interval after that. Past
// maxLimiters keys it forgets those whose bucket refilled, looking at most
// once a second; a bucket still spent is never forgotten (that would
// reset its limit), so the keys are bounded by those who spent theirs:
// callers key only by admitted peers or listed agents.
type Keyed struct {
	mu    sync.Mutex
	m     map[string]*rate.Limiter
	every time.Duration
	burst int
	swept time.Time // when a full map was last swept
}

const maxLimiters = 4096

// New returns buckets that hold burst tokens and get one every interval.
func New(every time.Duration, burst int) *Keyed {
	return &Keyed{m: map[string]*rate.Limiter{}, every: every, burst: burst}
}

// Allow spends one token of key's bucket, and reports whether there was one.
func (l *Keyed) Allow(key string) bool { return l.AllowN(key, 1) }

// AllowN spends n tokens of key's bucket, and reports whether there were.
func (l *Keyed) AllowN(key string, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if now := time.Now(); len(l.m) >= maxLimiters && now.Sub(l.swept) >= time.Second {
			l.swept = now
			for k, kb := range l.m {
				if kb.Tokens() >= float64(l.burst) {
					delete(l.m, k)
				}
			}
		}
		b = rate.NewLimiter(rate.Every(l.every), l.burst)
		l.m[key] = b
	}
	return b.AllowN(time.Now(), n)
}

// Left returns how many tokens key's bucket holds, without spending.
func (l *Keyed) Left(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.m[key]; b != nil {
		return int(b.Tokens())
	}
	return l.burst
}

// Spent reports whether key's bucket is empty, without spending.
func (l *Keyed) Spent(key string) bool { return l.Left(key) < 1 }
