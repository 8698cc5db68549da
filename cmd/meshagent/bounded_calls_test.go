//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// handlerTimeout makes the daemons the test starts time their handlers
// out after d.
func handlerTimeout(t *testing.T, d time.Duration) {
	testHookNodeConfig = func(c *node.Config) { c.HandlerTimeout = d }
	t.Cleanup(func() { testHookNodeConfig = nil })
}

// Attack 11: a process takes an action with /v1/handle and then neither
// reads its stream nor replies. Calls for that action are held only until
// the handler timeout, never more than maxPendingPerAction of them, and
// none is parked when the process reads again; another agent's calls for
// another action keep being served.
func TestBoundedPendingCalls(t *testing.T) {
	handlerTimeout(t, time.Second)
	m, a, b, _, bID := twoDaemons(t, "read:logs", "read:status", nil)
	c := m.join("carol", "read:status", b)

	// An honest process serves read:status.
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- events(ctx, b, "/v1/handle?action=read:status", func(d []byte) (bool, error) {
			var ev struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(d, &ev); err != nil {
				return false, err
			}
			return true, apiCall(b, "POST", "/v1/reply", map[string]any{"id": ev.ID, "body": map[string]string{"ok": "yes"}}, io.Discard)
		})
	}()
	t.Cleanup(func() { cancel(); <-served })
	send := func(action string, body any) error {
		return apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": action, "body": body, "timeout": "5s"}, io.Discard)
	}
	honest := func() error {
		return apiCall(c, "POST", "/v1/send", map[string]any{"to": bID, "action": "read:status", "body": map[string]int{"n": 1}, "timeout": "5s"}, io.Discard)
	}
	if err := simulations.WaitFor(15*time.Second, honest); err != nil {
		t.Fatalf("read:status never served: %v", err)
	}

	// The stalled process: it reads nothing until told.
	stalled := openRawStream(t, b, "/v1/handle?action=read:logs")
	pending := func() (calls, bytes float64) {
		p := scrape(t, b)
		return metricSum(p, "meshagent_pending_calls"), metricSum(p, "meshagent_pending_call_bytes")
	}

	// 80 calls of 200 KiB each at once: enough to fill the stream's
	// buffers, then the queue.
	big := strings.Repeat("a", 200<<10)
	const attack = 80
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range attack {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if send("read:logs", big) != nil {
				failed.Add(1)
			}
		}()
	}
	attacked := make(chan struct{})
	go func() { wg.Wait(); close(attacked) }()
	var maxCalls, maxBytes float64
	honestOK, honestAll := 0, 0
	for done := false; !done; {
		select {
		case <-attacked:
			done = true
		default:
		}
		n, by := pending()
		maxCalls, maxBytes = max(maxCalls, n), max(maxBytes, by)
		honestAll++
		if err := honest(); err == nil {
			honestOK++
		} else {
			t.Logf("honest call: %v", err)
		}
	}
	t.Logf("during the attack: at most %.0f calls, %.1f MiB held; honest calls %d/%d", maxCalls, maxBytes/(1<<20), honestOK, honestAll)
	if failed.Load() != attack {
		t.Fatalf("%d of %d calls to the stalled process succeeded", attack-failed.Load(), attack)
	}
	if maxCalls > maxPendingPerAction || maxBytes > maxPendingBytesPerAction {
		t.Fatalf("held %.0f calls, %.0f bytes: over the bound (%d, %d)", maxCalls, maxBytes, maxPendingPerAction, maxPendingBytesPerAction)
	}
	if float64(honestOK) < 0.9*float64(honestAll) {
		t.Fatalf("honest calls on another action: %d of %d passed", honestOK, honestAll)
	}

	// Every call timed out: the daemon holds none.
	if err := simulations.WaitFor(5*time.Second, func() error {
		if n, by := pending(); n != 0 || by != 0 {
			return fmt.Errorf("still held after the handler timeout: %.0f calls, %.0f bytes", n, by)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The process reads again: it gets what was written before it
	// stalled, then a new call, and nothing stays parked.
	seen := make(chan string, attack+1)
	go func() {
		for {
			ev, err := stalled.read()
			if err != nil {
				close(seen)
				return
			}
			seen <- ev.data
		}
	}()
	late := make(chan error, 1)
	go func() { late <- send("read:logs", "late") }()
	stale := 0
	for d := range seen {
		if strings.Contains(d, `"body":"late"`) {
			break
		}
		stale++
	}
	t.Logf("the process, reading again, got %d calls whose callers had gone", stale)
	if n, _ := pending(); n > 1 {
		t.Fatalf("%.0f calls held once the process read its stream (only the late one may be)", n)
	}
	if err := <-late; err == nil || !strings.Contains(err.Error(), "did not reply in time") {
		t.Fatalf("late call: %v", err)
	}
	if err := simulations.WaitFor(5*time.Second, func() error {
		if n, _ := pending(); n != 0 {
			return fmt.Errorf("%.0f calls held after the late call timed out", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := honest(); err != nil {
		t.Fatalf("read:status after the attack: %v", err)
	}
}
