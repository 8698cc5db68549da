//go:build !linux

package cputime

import "time"

var fallbackStart = time.Now()

// Thread falls back to wall time where the thread's CPU clock is not at
// hand.
func Thread() time.Duration { return time.Since(fallbackStart) }
