//go:build meshsim

package simulations

import (
	"fmt"
	"strings"
	"testing"
)

type fakeTB struct {
	cleanups []func()
	errs     []string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// The leak check must fail when a goroutine outlives the test, and pass
// when it ends.
func TestCheckLeaksCatchesALeak(t *testing.T) {
	f := &fakeTB{}
	checkLeaks(f, 200e6)
	stop := make(chan struct{})
	go func() { <-stop }()
	f.runCleanups()
	if len(f.errs) != 1 || !strings.Contains(f.errs[0], "goroutine leak") {
		t.Fatalf("leak not reported: %v", f.errs)
	}
	close(stop)

	g := &fakeTB{}
	checkLeaks(g, 2e9)
	done := make(chan struct{})
	go func() { <-done }()
	close(done)
	g.runCleanups()
	if len(g.errs) != 0 {
		t.Fatalf("false leak: %v", g.errs)
	}
}
