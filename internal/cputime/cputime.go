// Package cputime reads the calling thread's CPU clock, for tests and
// benchmarks that measure what they ran, not the time they waited for a
// CPU on a shared machine.
package cputime

import "runtime"

// LockThread locks the calling goroutine to its OS thread, so that Thread
// measures one goroutine's work, and returns the unlock.
func LockThread() func() { runtime.LockOSThread(); return runtime.UnlockOSThread }
