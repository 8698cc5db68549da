//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// benchPair starts bob's daemon, which serves read:logs with a handler that
// counts its runs, and alice's (tokens for ping:agent and read:logs),
// bootstrapping from bob, and waits until alice has admitted bob. It
// returns alice's home, bob's ID and the handler's count.
func benchPair(t *testing.T) (a, bID string, handled *atomic.Int64) {
	t.Helper()
	m := newTestMesh(t)
	a, _, fa := m.agent("alice", "ping:agent,read:logs")
	b, bID, fb := m.agent("bob", "")
	bn := m.start(b, fb)
	handled = new(atomic.Int64)
	if err := bn.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) {
		handled.Add(1)
		return []byte(`{"lines":[]}`), nil
	}); err != nil {
		t.Fatal(err)
	}
	m.start(a, fa, bn)
	admitted(t, a, bID, 15*time.Second)
	return a, bID, handled
}

// A closed-loop bench through two real daemons: every call it counts
// reached the callee's handler, and its summary adds up.
func TestBenchThroughTwoDaemons(t *testing.T) {
	a, bID, handled := benchPair(t)

	r := cli(t, "bench", "--home", a, "--to", bID, "--action", "read:logs", "--concurrency", "4", "--duration", "2s", "--json")
	if r.code != 0 {
		t.Fatalf("bench: exit %d: %s", r.code, r.stderr)
	}
	var s benchSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("bench --json printed %q: %v", r.stdout, err)
	}
	t.Logf("%d calls, %.0f/s, errors %v, latency %+v", s.Calls, s.CallsPerS, s.ErrorsByCode, s.Latency)
	if s.Calls == 0 || s.OK == 0 || s.Calls != s.OK+s.Errors {
		t.Fatalf("calls %d, ok %d, errors %d", s.Calls, s.OK, s.Errors)
	}
	var byCode int64
	for _, n := range s.ErrorsByCode {
		byCode += n
	}
	if byCode != s.Errors {
		t.Fatalf("errors %d, by code %v", s.Errors, s.ErrorsByCode)
	}
	// A call that failed may still have run the handler (its reply lost);
	// one that passed certainly did.
	if n := handled.Load(); n < s.OK || n > s.Calls || (s.Errors == 0 && n != s.OK) {
		t.Fatalf("the handler ran %d times for %d calls, %d ok (errors %v)", n, s.Calls, s.OK, s.ErrorsByCode)
	}
	if s.Errors != 0 {
		t.Errorf("errors in an honest 2 s run: %v", s.ErrorsByCode)
	}
	// The caller's replay guard remembers each reply it accepted, within
	// the window.
	if got := metricSum(scrape(t, a), "meshagent_replay_nonces"); got < float64(s.OK) {
		t.Errorf("alice's replay guard holds %.0f nonces after %d accepted replies", got, s.OK)
	}
	if s.Seconds < 2 || s.Seconds > 20 {
		t.Fatalf("ran %.2f s for --duration 2s", s.Seconds)
	}
	if want := float64(s.Calls) / s.Seconds; s.CallsPerS < want*0.999 || s.CallsPerS > want*1.001 {
		t.Fatalf("calls/s %.1f, calls/seconds %.1f", s.CallsPerS, want)
	}
	l := s.Latency
	if l == nil {
		t.Fatal("no latency in the summary")
	}
	ordered := []float64{l.Min, l.P50, l.P90, l.P99, l.P999, l.Max}
	for i := 1; i < len(ordered); i++ {
		if ordered[i] < ordered[i-1] || ordered[0] <= 0 {
			t.Fatalf("latency not ordered (min, p50, p90, p99, p99.9, max): %v", ordered)
		}
	}
	if l.Mean < l.Min || l.Mean > l.Max {
		t.Fatalf("mean %v outside [min %v, max %v]", l.Mean, l.Min, l.Max)
	}
	var inHist uint64
	for i, row := range s.Histogram {
		inHist += row.Count
		if row.ToMs < row.FromMs || (i > 0 && row.FromMs < s.Histogram[i-1].FromMs) {
			t.Fatalf("histogram rows out of order: %+v", s.Histogram)
		}
	}
	if inHist != uint64(s.OK) {
		t.Fatalf("histogram holds %d calls, %d passed", inHist, s.OK)
	}
	var tlCalls, tlErrs int64
	for _, row := range s.Timeline {
		tlCalls += row.Calls
		tlErrs += row.Errors
	}
	if tlCalls != s.Calls || tlErrs != s.Errors || len(s.Timeline) < 2 {
		t.Fatalf("timeline (%d seconds) holds %d calls and %d errors, summary %d and %d", len(s.Timeline), tlCalls, tlErrs, s.Calls, s.Errors)
	}
	if !strings.Contains(r.stderr, "calls,") || !strings.Contains(r.stderr, "/s in the last second") {
		t.Fatalf("no progress line on stderr: %q", r.stderr)
	}
}

// An open-loop bench starts calls at the rate asked, whatever the answers,
// and prints its summary as text.
func TestBenchOpenLoop(t *testing.T) {
	a, bID, handled := benchPair(t)
	r := cli(t, "bench", "--home", a, "--to", bID, "--action", "read:logs", "--rate", "100", "--duration", "1s", "-c", "8", "--size", "64")
	if r.code != 0 {
		t.Fatalf("bench: exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"open loop at 100 calls/s", "64-byte body", "calls/s", "p50", "p99.9", "#"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("summary has no %q:\n%s", want, r.stdout)
		}
	}
	t.Logf("%s\n%s", r.stderr, r.stdout)
	var calls, ok, errs int64
	if _, err := fmt.Sscanf(r.stdout[strings.Index(r.stdout, "calls     "):], "calls %d", &calls); err != nil {
		t.Fatalf("%v in\n%s", err, r.stdout)
	}
	if _, err := fmt.Sscanf(r.stdout[strings.Index(r.stdout, "(ok "):], "(ok %d", &ok); err != nil {
		t.Fatalf("%v in\n%s", err, r.stdout)
	}
	_, _ = fmt.Sscanf(r.stdout[strings.Index(r.stdout, "errors "):], "errors %d", &errs)
	// 100 calls are due in the second; a call
	// every worker was too busy to start is counted as missed instead.
	missed := int64(0)
	if i := strings.Index(r.stdout, "missed "); i >= 0 {
		_, _ = fmt.Sscanf(strings.TrimLeft(r.stdout[i+len("missed"):], " "), "%d", &missed)
	}
	if calls+missed != 100 || calls != ok+errs {
		t.Fatalf("calls %d (ok %d, errors %d), missed %d: want 100 at 100/s for 1 s\n%s", calls, ok, errs, missed, r.stdout)
	}
	if n := handled.Load(); n < ok || n > calls {
		t.Fatalf("the handler ran %d times for %d calls, %d ok", n, calls, ok)
	}
}

// Flags that cannot work are refused in one line before any load.
func TestBenchRefusesBadFlags(t *testing.T) {
	a, bID, handled := benchPair(t)
	stranger := mustOK(t, "init", "--home", filepath.Join(t.TempDir(), "c"), "--name", "carol")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--home", t.TempDir(), "--to", bID, "--action", "read:logs"}, 2, "no agent at --home"},
		{[]string{"--home", a, "--to", stranger, "--action", "read:logs"}, 2, "unknown peer " + stranger},
		{[]string{"--home", a, "--to", "12D3KooWnotapeer", "--action", "read:logs"}, 2, "--to:"},
		{[]string{"--home", a, "--to", bID, "--action", "read:*"}, 2, "--action:"},
		{[]string{"--home", a, "--to", bID, "--action", "Read:Logs"}, 2, "--action:"},
		{[]string{"--home", a, "--to", bID, "--action", "write:reports"}, 2, "no token"},
		{[]string{"--home", a, "--to", bID, "--action", "read:logs", "--body", "{"}, 2, "not valid JSON"},
		{[]string{"--home", a, "--to", bID, "--action", "read:logs", "--body", "{}", "--size", "10"}, 2, "exclude each other"},
		{[]string{"--home", a, "--to", bID, "--action", "read:logs", "-c", "0"}, 2, "--concurrency"},
		{[]string{"--home", a, "--to", bID, "--action", "read:logs", "--rate", "-1"}, 2, "--rate"},
		{[]string{"--home", a, "--to", bID}, 2, "--action is required"},
	} {
		r := cli(t, append([]string{"bench"}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") > 0 {
			t.Errorf("bench %v: exit %d, %q; want exit %d and one line with %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	// A home whose daemon is not running.
	stopped := filepath.Join(t.TempDir(), "d")
	mustOK(t, "init", "--home", stopped, "--name", "dave")
	if r := cli(t, "bench", "--home", stopped, "--to", bID, "--action", "read:logs"); r.code != 1 || !strings.Contains(r.stderr, "no daemon answers at "+stopped) {
		t.Errorf("bench on a stopped daemon: exit %d, %q", r.code, r.stderr)
	}
	if n := handled.Load(); n != 0 {
		t.Fatalf("refused benches made %d calls", n)
	}
}

func TestLatencyHistogram(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 127, 128, 129, 255, 256, 1000, time.Millisecond, 3*time.Millisecond + 7, time.Minute} {
		i := histIndex(d)
		if lo, hi := histLower(i), histLower(i+1); d < lo || d >= hi || (d >= 128 && float64(hi-lo) > float64(d)/64) {
			t.Fatalf("%v in bucket %d [%v, %v)", d, i, lo, hi)
		}
	}
	var h, other latencyHist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	other.add(time.Second)
	h.merge(&other)
	if h.n != 1001 || h.max != time.Second || h.min != time.Microsecond {
		t.Fatalf("merged: n %d, min %v, max %v", h.n, h.min, h.max)
	}
	for q, want := range map[float64]time.Duration{0.5: 501 * time.Microsecond, 0.9: 901 * time.Microsecond, 0.999: 1000 * time.Microsecond, 1: time.Second} {
		if got := h.quantile(q); got < want || float64(got) > float64(want)*1.02 {
			t.Errorf("quantile %v = %v, want %v (within 2 %%)", q, got, want)
		}
	}
	var n uint64
	for _, r := range h.rows(12) {
		n += r.Count
	}
	if n != h.n {
		t.Fatalf("rows hold %d of %d", n, h.n)
	}
}

// busyDaemon serves the local API routes bench uses: its /v1/send refuses
// as busy (HTTP 503, Retry-After, the daemon's JSON) while busy says so,
// and counts the sends it received and the busy ones. It returns the home
// and the ID of the one peer it lists.
func busyDaemon(t *testing.T, busy func(n int64) bool, retryAfterMs int) (home, peer string, sends, refused *atomic.Int64) {
	t.Helper()
	peer = mustOK(t, "init", "--home", filepath.Join(t.TempDir(), "p"), "--name", "peer")
	sends, refused = new(atomic.Int64), new(atomic.Int64)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]string{"peer_id": "12D3KooWself"})
	})
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, []map[string]string{{"peer_id": peer, "state": "alive"}})
	})
	mux.HandleFunc("GET /v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, []trust.TokenInfo{{Links: []trust.LinkInfo{{Scopes: []string{"read:logs"}}}}})
	})
	mux.HandleFunc("POST /v1/send", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if busy(sends.Add(1)) {
			refused.Add(1)
			w.Header().Set("Retry-After", "1")
			writeJSON(w, 503, map[string]any{"error": "busy: the replay guard is full", "code": "busy", "retry_after_ms": retryAfterMs})
			return
		}
		writeJSON(w, 200, map[string]any{"from": peer, "body": map[string]string{}})
	})
	return fakeAPI(t, mux), peer, sends, refused
}

func benchJSON(t *testing.T, args ...string) benchSummary {
	t.Helper()
	r := cli(t, append([]string{"bench", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("bench %v: exit %d: %s", args, r.code, r.stderr)
	}
	var s benchSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("bench --json printed %q: %v", r.stdout, err)
	}
	return s
}

// A busy refusal is counted under its code; the open loop does not retry
// it, the closed loop waits its Retry-After before the next call, and
// --retry-busy retries it.
func TestBenchBusy(t *testing.T) {
	// Open loop: every other call is refused; none is sent twice.
	home, peer, sends, refused := busyDaemon(t, func(n int64) bool { return n%2 == 0 }, 1)
	s := benchJSON(t, "--home", home, "--to", peer, "--action", "read:logs", "--rate", "200", "--duration", "500ms", "-c", "4")
	if s.Calls+s.Missed != 100 || s.Calls != sends.Load() || s.ErrorsByCode["busy"] != refused.Load() || s.Errors != refused.Load() || s.BusyRetries != 0 {
		t.Fatalf("open loop: %d calls (%d missed), errors %v, %d retries; the daemon got %d sends, refused %d",
			s.Calls, s.Missed, s.ErrorsByCode, s.BusyRetries, sends.Load(), refused.Load())
	}

	// Closed loop: one worker, always refused, waits 200 ms between calls.
	home, peer, sends, _ = busyDaemon(t, func(int64) bool { return true }, 200)
	s = benchJSON(t, "--home", home, "--to", peer, "--action", "read:logs", "--duration", "500ms", "-c", "1")
	if s.Calls < 2 || s.Calls > 4 || s.ErrorsByCode["busy"] != s.Calls || s.Calls != sends.Load() || s.Latency != nil {
		t.Fatalf("closed loop, all busy: %d calls (the daemon got %d), errors %v, latency %+v", s.Calls, sends.Load(), s.ErrorsByCode, s.Latency)
	}

	// --retry-busy: the first 3 sends are refused, then every call passes.
	home, peer, sends, refused = busyDaemon(t, func(n int64) bool { return n <= 3 }, 1)
	s = benchJSON(t, "--home", home, "--to", peer, "--action", "read:logs", "--duration", "200ms", "-c", "1", "--retry-busy")
	if s.Errors != 0 || s.BusyRetries != 3 || s.Calls+3 != sends.Load() || refused.Load() != 3 {
		t.Fatalf("--retry-busy: %d calls, errors %v, %d retries; the daemon got %d sends", s.Calls, s.ErrorsByCode, s.BusyRetries, sends.Load())
	}
}

func TestParseRetryAfter(t *testing.T) {
	for v, want := range map[string]time.Duration{"": 0, "2": 2 * time.Second, "0.5": 500 * time.Millisecond, "soon": 0, "-1": 0} {
		if got := parseRetryAfter(v); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
	if got := parseRetryAfter(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)); got < 59*time.Minute || got > time.Hour {
		t.Errorf("Retry-After in an hour: %v", got)
	}
}
