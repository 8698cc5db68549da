//go:build !linux

package node

import "time"

var cpuFallbackStart = time.Now()

// threadCPU falls back to wall time where the thread's CPU clock is not
// at hand.
func threadCPU() time.Duration { return time.Since(cpuFallbackStart) }

func lockThread() func() { return func() {} }
