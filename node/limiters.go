package node

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiters is a set of token buckets by key (a peer and a protocol, an
// agent): burst at once and one every interval after that. It holds at
// most maxLimiters keys, forgetting those whose bucket refilled.
type limiters struct {
	mu    sync.Mutex
	m     map[string]*rate.Limiter
	every time.Duration
	burst int
}

const maxLimiters = 4096

func newLimiters(every time.Duration, burst int) *limiters {
	return &limiters{m: map[string]*rate.Limiter{}, every: every, burst: burst}
}

// allow spends one token of key's bucket, and reports whether there was one.
func (l *limiters) allow(key string) bool { return l.allowN(key, 1) }

// allowN spends n tokens of key's bucket, and reports whether there were.
func (l *limiters) allowN(key string, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[key]
	if b == nil {
		if len(l.m) >= maxLimiters {
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

// left returns how many tokens key's bucket holds, without spending.
func (l *limiters) left(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.m[key]; b != nil {
		return int(b.Tokens())
	}
	return l.burst
}

// spent reports whether key's bucket is empty, without spending.
func (l *limiters) spent(key string) bool { return l.left(key) < 1 }
