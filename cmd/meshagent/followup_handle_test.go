//go:build meshsim

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// A /v1/handle process that stops reading while 200 KiB calls arrive for
// its action: the daemon's write to it blocks, gives up after
// handleWriteTimeout, and drops the process; its action is free again and
// another process serves it.
func TestStalledHandlerIsDropped(t *testing.T) {
	prev := handleWriteTimeout
	handleWriteTimeout = time.Second
	t.Cleanup(func() { handleWriteTimeout = prev })
	handlerTimeout(t, time.Second)
	_, a, b, _, bID := twoDaemons(t, "read:logs", "read:status", nil)
	send := func(body any) error {
		return apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "read:logs", "body": body, "timeout": "5s"}, io.Discard)
	}

	// The stalled process: it reads nothing until the end.
	stalled := openRawStream(t, b, "/v1/handle?action=read:logs")
	// Calls reach bob (and fail: no one replies).
	if err := simulations.WaitFor(15*time.Second, func() error {
		if err := send("probe"); err == nil || !strings.Contains(err.Error(), "did not reply in time") {
			return fmt.Errorf("a call did not reach the stalled handler: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// 8 calls of 200 KiB: more than the socket between them holds.
	big := strings.Repeat("a", 200<<10)
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = send(big) }()
	}
	wg.Wait()

	// The action is free again: a new process takes it and serves it.
	var next *sseStream
	if err := simulations.WaitFor(10*time.Second, func() error {
		s, code, body := openStream(t, b, "/v1/handle?action=read:logs")
		if code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		next = s
		return nil
	}); err != nil {
		t.Fatalf("the stalled process still holds its action: %v", err)
	}
	t.Logf("action free again %.1f s after the big calls began", time.Since(start).Seconds())
	replied := make(chan error, 1)
	go func() { replied <- send("again") }()
	var call struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(next.next(t, 10*time.Second)), &call); err != nil {
		t.Fatal(err)
	}
	if err := apiCall(b, "POST", "/v1/reply", map[string]any{"id": call.ID, "body": map[string]string{"ok": "yes"}}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := <-replied; err != nil {
		t.Fatalf("a call served by the new process: %v", err)
	}

	// The stalled process, reading at last, gets what was written before
	// it stalled, then the end of its stream; the daemon holds no call.
	got := 0
	for {
		if _, err := stalled.readWithin(t, 5*time.Second); err != nil {
			break
		}
		got++
	}
	t.Logf("the stalled process got %d calls, then the end of its stream", got)
	if c := metricSum(scrape(t, b), "meshagent_pending_calls"); c != 0 {
		t.Fatalf("%v calls held", c)
	}
}
