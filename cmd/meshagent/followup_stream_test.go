//go:build meshsim

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// fakeDaemon serves, on a local API socket in a new home, each stream in
// streams (keyed by path and unescaped query) as a server-sent-event body, then
// ends it. It returns the home.
func fakeDaemon(t *testing.T, streams map[string]string) string {
	t.Helper()
	return fakeAPI(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query, _ := url.QueryUnescape(r.URL.RawQuery)
		body, ok := streams[r.URL.Path+"?"+query]
		if !ok {
			writeJSON(w, 404, apiError{Error: "no stream " + r.URL.RequestURI()})
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, body)
	}))
}

// The events the fake daemon ends its streams with, as the real one
// writes them.
const (
	fellBehindEvent = "event: error\ndata: {\"error\":\"this subscriber fell behind: over 8 MiB of messages waited for it; they were dropped and the stream ends (subscribe again)\",\"code\":\"fell_behind\"}\n\n"
	fellBehindLine  = "meshagent: subscription dropped: fell behind (the daemon keeps at most 8 MiB for a slow reader)"
	streamEndedLine = "meshagent: the daemon ended the stream (it stopped, or dropped this reader)"
)

// The CLI's stream readers stop at an error event and at the end of a
// stream, and say so on stderr with exit 1; they print message events
// only, whatever comments and other event types come between.
func TestStreamEndsAreErrorsInTheCLI(t *testing.T) {
	home := fakeDaemon(t, map[string]string{
		"/v1/subscribe?topic=fell":    ": keepalive\n\ndata: {\"n\":1}\n\nevent: progress\ndata: {\"skip\":1}\n\n" + fellBehindEvent + "data: {\"n\":2}\n\n",
		"/v1/subscribe?topic=ended":   "data: {\"n\":1}\n\n",
		"/v1/subscribe?topic=other":   "event: error\ndata: {\"error\":\"the daemon stops\",\"code\":\"stopping\"}\n\n",
		"/v1/subscribe?topic=crlf":    "data: {\"n\":1}\r\n\r\n" + strings.ReplaceAll(fellBehindEvent, "\n", "\r\n"),
		"/v1/handle?action=read:logs": ": keepalive\n\n",
	})
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"subscribe", "--topic", "fell"}, 1, `{"n":1}`, fellBehindLine},
		{[]string{"subscribe", "--topic", "crlf"}, 1, `{"n":1}`, fellBehindLine},
		{[]string{"subscribe", "--topic", "ended"}, 1, `{"n":1}`, streamEndedLine},
		{[]string{"subscribe", "--topic", "other"}, 1, "", "meshagent: stream ended by the daemon: stopping: the daemon stops"},
		// Done before the stream ends: no error.
		{[]string{"subscribe", "--topic", "fell", "--count", "1"}, 0, `{"n":1}`, ""},
		{[]string{"handle", "--action", "read:logs", "--", "cat"}, 1, "", streamEndedLine},
	} {
		r := cli(t, append([]string{tc.args[0], "--home", home}, tc.args[1:]...)...)
		if r != (result{tc.code, tc.stdout, tc.stderr}) {
			t.Errorf("meshagent %s: got %+v, want exit %d, stdout %q, stderr %q", strings.Join(tc.args, " "), r, tc.code, tc.stdout, tc.stderr)
		}
	}
}

// The Python client raises MeshError at the end of a stream, with the
// daemon's code when it gave one; agent.py subscribe exits 1 saying so.
func TestStreamEndsAreErrorsInPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	home := fakeDaemon(t, map[string]string{
		"/v1/subscribe?topic=fell":  ": keepalive\n\ndata: {\"n\":1}\n\nevent: progress\ndata: {\"skip\":1}\n\n" + fellBehindEvent,
		"/v1/subscribe?topic=ended": "data: {\"n\":1}\n\n",
	})
	script := filepath.Join("..", "..", "examples", "python", "agent.py")
	for topic, want := range map[string]string{
		"fell":  "agent.py: fell_behind: this subscriber fell behind: over 8 MiB",
		"ended": "agent.py: stream_ended: the daemon ended the stream",
	} {
		// A client that misses the end of the stream waits for ever.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, py, script, "subscribe", "--home", home, "--topic", topic)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if cmd.ProcessState.ExitCode() != 1 || strings.TrimSpace(stdout.String()) != `{"n": 1}` || !strings.HasPrefix(stderr.String(), want) {
			t.Errorf("agent.py subscribe --topic %s: %v, stdout %q, stderr %q; want exit 1, stderr %q...", topic, err, stdout.String(), stderr.String(), want)
		}
	}
}

// blockedWriter lets its first write through, then blocks writes until
// released: a reader whose output is stuck.
type blockedWriter struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	first    chan struct{} // closed at the first write
	released chan struct{}
	once     sync.Once
}

func (b *blockedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	wrote := b.buf.Len() > 0
	if !wrote {
		b.buf.Write(p)
	}
	b.mu.Unlock()
	if !wrote {
		b.once.Do(func() { close(b.first) })
		return len(p), nil
	}
	<-b.released
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *blockedWriter) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// meshagent subscribe whose output stalls while 200 KiB messages arrive:
// the daemon drops it, and once its output moves again it prints what it
// had, then exits 1 saying it fell behind.
func TestSubscribeCLIFellBehind(t *testing.T) {
	_, a, b, _, _ := twoDaemons(t, "publish:tasks", "publish:tasks", func(_ string, fc *fileConfig) {
		fc.Heartbeat, fc.DeadAfter = time.Second, 10*time.Second // gossip keeps messages about 1 s
	})
	publish := func(body any) error {
		return apiCall(b, "POST", "/v1/publish", map[string]any{"topic": "tasks", "action": "publish:tasks", "body": body}, io.Discard)
	}
	out := &blockedWriter{first: make(chan struct{}), released: make(chan struct{})}
	var errb bytes.Buffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{"subscribe", "--home", a, "--topic", "tasks"}, out, &errb) }()
	released := false
	release := func() {
		if !released {
			released = true
			close(out.released)
		}
	}
	defer release()
	if err := simulations.WaitFor(15*time.Second, func() error {
		if err := publish(map[string]int{"job": 0}); err != nil {
			return err
		}
		select {
		case <-out.first:
			return nil
		case code := <-exited:
			t.Fatalf("subscribe exited %d: %s", code, errb.String())
		case <-time.After(200 * time.Millisecond):
		}
		return fmt.Errorf("no message delivered")
	}); err != nil {
		t.Fatal(err)
	}
	// Its output is stuck from now on.
	big := strings.Repeat("a", 200<<10)
	for sent, deadline := 0, time.Now().Add(15*time.Second); ; sent++ {
		if err := publish(big); err != nil {
			t.Fatal(err)
		}
		if metricSum(scrape(t, a), "meshagent_subscribers_dropped_total") > 0 {
			t.Logf("dropped after %d messages of 200 KiB", sent+1)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d messages of 200 KiB, no subscriber dropped", sent+1)
		}
	}
	release()
	select {
	case code := <-exited:
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		for _, l := range lines {
			if !strings.Contains(l, `"topic":"tasks"`) {
				t.Fatalf("printed a line that is no message: %.200s", l)
			}
		}
		if stderr := strings.TrimSpace(errb.String()); code != 1 || stderr != fellBehindLine {
			t.Fatalf("subscribe exited %d with %q after %d messages; want 1 and %q", code, stderr, len(lines), fellBehindLine)
		}
		t.Logf("printed %d messages, then: %s", len(lines), errb.String())
	case <-time.After(15 * time.Second):
		t.Fatal("subscribe did not exit once its output moved again")
	}
}
