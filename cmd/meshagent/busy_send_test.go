//go:build meshsim

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// sendAnswer is what /v1/send answered.
type sendAnswer struct {
	status     int
	retryAfter string // the Retry-After header
	err        apiError
}

// postSend calls action on peer to through home's /v1/send, waiting at
// most timeout.
func postSend(t *testing.T, home, to, action, timeout string) sendAnswer {
	t.Helper()
	a, err := trySend(t, home, to, action, timeout)
	if err != nil {
		t.Error(err)
	}
	return a
}

// holdSend is postSend for a call that the test's end cuts short: the
// daemons stop under it.
func holdSend(t *testing.T, home, to, action string) sendAnswer {
	a, _ := trySend(t, home, to, action, "10s")
	return a
}

func trySend(t *testing.T, home, to, action, timeout string) (sendAnswer, error) {
	c := apiHTTP(t, home)
	b, _ := json.Marshal(map[string]any{"to": to, "action": action, "body": map[string]int{"n": 1}, "timeout": timeout})
	resp, err := c.Post("http://meshagent/v1/send", "application/json", bytes.NewReader(b))
	if err != nil {
		return sendAnswer{}, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	a := sendAnswer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	_ = json.Unmarshal(data, &a.err)
	return a, nil
}

// pendingCalls waits until home's daemon holds n calls for local handlers.
func pendingCalls(t *testing.T, home string, n int) {
	t.Helper()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if got := metricSum(scrape(t, home), "meshagent_pending_calls"); got != float64(n) {
			return fmt.Errorf("%v calls held, want %d", got, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A callee that sheds load answers busy, and the caller's local API says
// so as back-pressure, not as a refusal: 503, a Retry-After header in
// whole seconds rounded up, and the JSON code busy with retry_after_ms;
// `meshagent send` prints one line, "busy: retry after ...", and exits 1.
// Both of the callee's bounds: its node's MaxConcurrentCalls (a retry
// after 250 ms) and the calls its daemon holds for one local process (64,
// then a retry after 1 s; until now a 403 handler_error).
func TestBusySendIs503(t *testing.T) {
	// busy sends one call past the bound and checks the answer.
	busy := func(t *testing.T, a, bID string, retryMS int64, why string) {
		t.Helper()
		got := postSend(t, a, bID, "read:logs", "10s")
		if got.status != 503 || got.retryAfter != "1" || got.err.Code != "busy" || got.err.RetryAfterMS != retryMS || !strings.Contains(got.err.Error, why) {
			t.Fatalf("a call past the bound: %d Retry-After %q %+v; want 503, Retry-After 1, busy, retry_after_ms %d, %q",
				got.status, got.retryAfter, got.err, retryMS, why)
		}
		r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs")
		want := fmt.Sprintf("meshagent: busy: retry after %s: ", time.Duration(retryMS)*time.Millisecond)
		if r.code != 1 || !strings.HasPrefix(r.stderr, want) || strings.Contains(r.stderr, "\n") || !strings.Contains(r.stderr, why) {
			t.Fatalf("meshagent send past the bound: exit %d, %q; want exit 1 and one line %q...", r.code, r.stderr, want)
		}
		t.Logf("%s", r.stderr)
	}

	t.Run("the callee's node runs all the calls it may", func(t *testing.T) {
		testHookNodeConfig = func(c *node.Config) { c.MaxConcurrentCalls = 1 }
		t.Cleanup(func() { testHookNodeConfig = nil })
		// Cleanups run last first: the daemons stop, ending the held call.
		held := make(chan sendAnswer, 1)
		t.Cleanup(func() { <-held })
		_, a, b, _, bID := twoDaemons(t, "read:logs", "read:status", nil)
		openRawStream(t, b, "/v1/handle?action=read:logs") // a process that never replies
		// The callee holds the call, and its node's only slot, until the
		// caller gives up (a cancel) or its handler timeout (10 s): the
		// caller waits as long, so that a slow machine never frees the slot
		// before the call past the bound.
		go func() { held <- holdSend(t, a, bID, "read:logs") }()
		pendingCalls(t, b, 1)
		busy(t, a, bID, 250, "calls running at once")
	})

	t.Run("the callee's daemon holds all the calls it may for a process", func(t *testing.T) {
		// Cleanups run last first: the daemons stop, ending the held calls.
		var wg sync.WaitGroup
		t.Cleanup(wg.Wait)
		_, a, b, _, bID := twoDaemons(t, "read:logs", "read:status", nil)
		openRawStream(t, b, "/v1/handle?action=read:logs")
		// In batches: a peer's streams in negotiation are bounded (32).
		for held := 0; held < maxPendingPerAction; {
			for range min(16, maxPendingPerAction-held) {
				held++
				wg.Add(1)
				go func() { defer wg.Done(); holdSend(t, a, bID, "read:logs") }()
			}
			pendingCalls(t, b, held)
		}
		busy(t, a, bID, hubBusyRetry.Milliseconds(), "the local handler of read:logs is busy")
	})
}
