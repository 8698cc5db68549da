//go:build meshsim

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// postStream POSTs in to path on home's API and returns the event stream
// of the answer; cancel gives up on it (the client goes away).
func postStream(t *testing.T, home, path string, in any) (*rawStream, context.CancelFunc) {
	t.Helper()
	b, _ := json.Marshal(in)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://meshagent"+path, bytes.NewReader(b))
	resp, err := apiHTTP(t, home).Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		body, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return newRawStream(resp), cancel
}

func postJSON(t *testing.T, home, path string, in any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(in)
	resp, err := apiHTTP(t, home).Post("http://meshagent"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

func eventID(t *testing.T, ev sseEvent) string {
	t.Helper()
	var v struct{ ID string }
	if err := json.Unmarshal([]byte(ev.data), &v); err != nil || v.ID == "" {
		t.Fatalf("event %s %q has no id", ev.name, ev.data)
	}
	return v.ID
}

// Two daemons over real libp2p: a /v1/handle process on bob posts
// progress that alice's streamed /v1/send gets as signed progress events
// before the reply; when alice's client goes away, bob's process gets a
// cancel event; a per-action handler timeout from the config ends a call
// (and tells the process) sooner than the default.
func TestLongCallsThroughDaemons(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "read:slow,read:logs", "", func(name string, fc *fileConfig) {
		if name == "bob" {
			fc.Timeouts = []actionTimeout{{Action: "read:slow", Handler: 15 * time.Minute}, {Action: "read:logs", Handler: time.Second}}
		}
	})
	admitted(t, a, bID, 10*time.Second)
	slow := openRawStream(t, b, "/v1/handle?action=read:slow")

	// Progress, then the reply.
	call, _ := postStream(t, a, "/v1/send", map[string]any{"to": bID, "action": "read:slow", "body": map[string]int{"n": 1}, "timeout": "15m", "stream": true})
	req, err := slow.readWithin(t, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := eventID(t, req)
	for i := 1; i <= 2; i++ {
		if code, body := postJSON(t, b, "/v1/progress", map[string]any{"id": id, "body": map[string]any{"progress": i, "total": 2}}); code != 200 {
			t.Fatalf("progress %d: %d %s", i, code, body)
		}
	}
	if code, body := postJSON(t, b, "/v1/progress", map[string]any{"id": id, "body": strings.Repeat("x", 17<<10)}); code != 413 {
		t.Fatalf("an oversized progress body: %d %s", code, body)
	}
	if code, body := postJSON(t, b, "/v1/reply", map[string]any{"id": id, "body": map[string]string{"summary": "done"}}); code != 200 {
		t.Fatalf("reply: %d %s", code, body)
	}
	var got []string
	for {
		ev, err := call.readWithin(t, 10*time.Second)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, ev.name+" "+ev.data)
		if ev.name != "progress" {
			break
		}
	}
	if len(got) != 3 || !strings.Contains(got[0], `"seq":1`) || !strings.Contains(got[0], `"body":{"progress":1,"total":2}`) ||
		!strings.Contains(got[1], `"seq":2`) || !strings.HasPrefix(got[2], `reply {`) || !strings.Contains(got[2], `"summary":"done"`) {
		t.Fatalf("alice's stream: %q", got)
	}

	// Alice's client gives up: bob's process is told.
	_, giveUp := postStream(t, a, "/v1/send", map[string]any{"to": bID, "action": "read:slow", "timeout": "15m", "stream": true})
	req, err = slow.readWithin(t, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id = eventID(t, req)
	time.Sleep(100 * time.Millisecond)
	giveUp()
	ev, err := slow.readWithin(t, 5*time.Second)
	if err != nil || ev.name != "cancel" || eventID(t, ev) != id || !strings.Contains(ev.data, `"reason":"caller_cancelled"`) {
		t.Fatalf("bob's process after alice gave up: %v %+v", err, ev)
	}
	if code, _ := postJSON(t, b, "/v1/progress", map[string]any{"id": id, "body": 1}); code != 404 {
		t.Fatalf("progress on a cancelled call: %d", code)
	}
	if code, _ := postJSON(t, b, "/v1/reply", map[string]any{"id": id, "body": 1}); code != 404 {
		t.Fatalf("reply to a cancelled call: %d", code)
	}

	// read:logs has a 1 s handler timeout on bob, whatever alice waits.
	logs := openRawStream(t, b, "/v1/handle?action=read:logs")
	start := time.Now()
	code, body := postJSON(t, a, "/v1/send", map[string]any{"to": bID, "action": "read:logs", "timeout": "30s"})
	if code != 403 || !strings.Contains(body, `"code":"handler_error"`) || time.Since(start) > 5*time.Second {
		t.Fatalf("a call past bob's 1 s handler timeout: %d %s after %s", code, body, time.Since(start))
	}
	if _, err := logs.readWithin(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if ev, err := logs.readWithin(t, 5*time.Second); err != nil || ev.name != "cancel" || !strings.Contains(ev.data, `"reason":"timeout"`) {
		t.Fatalf("bob's read:logs process after the timeout: %v %+v", err, ev)
	}

	// Bad input: one line each.
	for _, in := range []map[string]any{
		{"to": bID, "action": "read:slow", "timeout": "2h"},
		{"to": bID, "action": "read:slow", "timeout": "soon"},
	} {
		if code, body := postJSON(t, a, "/v1/send", in); code != 400 || strings.Count(body, "\n") != 0 {
			t.Fatalf("/v1/send %v: %d %s", in, code, body)
		}
	}
	if code, body := postJSON(t, b, "/v1/progress", map[string]any{"id": "nope", "body": 1}); code != 404 {
		t.Fatalf("progress for no call: %d %s", code, body)
	}
}

func TestParseTimeouts(t *testing.T) {
	to, err := parseTimeouts([]actionTimeout{{Action: "read:slow", Call: 15 * time.Minute, Handler: 20 * time.Minute}},
		[]string{"read:slow=16m"}, []string{"read:logs=1s"})
	if err != nil {
		t.Fatal(err)
	}
	if to.callTimeout("read:slow") != 16*time.Minute || to.callTimeout("read:other") != defaultCallTimeout ||
		to.handlerTimeout("read:slow") != 20*time.Minute || to.handlerTimeout("read:logs") != time.Second || to.handlerTimeout("x:y") != 0 {
		t.Fatalf("%+v", to)
	}
	for _, c := range []struct {
		list        []actionTimeout
		call, handl []string
		want        string
	}{
		{[]actionTimeout{{Action: "read:*", Call: time.Minute}}, nil, nil, "config: timeouts:"},
		{[]actionTimeout{{Action: "read:x"}}, nil, nil, "give call, handler or both"},
		{[]actionTimeout{{Action: "read:x", Handler: 2 * time.Hour}}, nil, nil, "at most 1h0m0s"},
		{nil, []string{"read:x"}, nil, "want ACTION=DURATION"},
		{nil, nil, []string{"read:x=-1s"}, "--handler-timeout"},
		{nil, []string{"read:x=soon"}, nil, "--call-timeout"},
	} {
		_, err := parseTimeouts(c.list, c.call, c.handl)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v, want %q", c, err, c.want)
		}
	}
}

// meshagent send --progress prints the callee's progress on stderr as it
// comes and the reply on stdout.
func TestSendProgressCLI(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "read:slow", "", nil)
	admitted(t, a, bID, 10*time.Second)
	slow := openRawStream(t, b, "/v1/handle?action=read:slow")
	wait := background(t, "send", "--home", a, "--to", bID, "--action", "read:slow", "--progress", "--timeout", "15m")
	req, err := slow.readWithin(t, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := eventID(t, req)
	if code, body := postJSON(t, b, "/v1/progress", map[string]any{"id": id, "body": map[string]any{"progress": 1, "message": "half"}}); code != 200 {
		t.Fatalf("progress: %d %s", code, body)
	}
	if code, body := postJSON(t, b, "/v1/reply", map[string]any{"id": id, "body": "done"}); code != 200 {
		t.Fatalf("reply: %d %s", code, body)
	}
	r := wait()
	if r.code != 0 || r.stderr != `{"body":{"message":"half","progress":1},"seq":1}` || !strings.Contains(r.stdout, `"body":"done"`) {
		t.Fatalf("send --progress: %+v", r)
	}
}

// The Python example: a long call with progress between two daemons, and a
// delegation that the delegate then uses.
func TestPythonLongCallAndDelegation(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "")
	b, bID, fb := m.agent("bob", "")
	c, cID, fc := m.agent("carol", "")
	mustOK(t, "token", "issue", "--ca", m.ca, "--to", aID, "--scopes", "read:logs", "--delegatable", "read:logs", "--out", filepath.Join(a, "own.token"))
	fa.Tokens = []string{"own.token"}
	bn := m.start(b, fb)
	m.start(a, fa, bn)
	m.start(c, fc, bn)
	admitted(t, a, bID, 10*time.Second)
	admitted(t, c, bID, 10*time.Second)
	script := filepath.Join("..", "..", "examples", "python", "agent.py")
	serve := exec.Command(py, script, "serve", "--home", b, "--action", "read:logs", "--long", "--count", "2")
	var serveErr bytes.Buffer
	serve.Stderr = &serveErr
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer serve.Process.Kill()
	// Until the Python handler is registered, calls are no_handler.
	var out string
	if err := simulations.WaitFor(15*time.Second, func() error {
		r, err := exec.Command(py, script, "call", "--home", a, "--to", bID, "--action", "read:logs", "--progress").CombinedOutput()
		if out = string(r); err != nil && strings.Contains(out, "no_handler") {
			return errors.New(out)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v; python serve: %s", err, serveErr.String())
	}
	if !strings.Contains(out, `{"seq": 1, "body": {"progress": 1, "total": 2, "message": "step 1"}}`) ||
		!strings.Contains(out, `{"seq": 2, "body": {"progress": 2, "total": 2, "message": "step 2"}}`) || !strings.Contains(out, `"served_by": "bob"`) {
		t.Fatalf("python call --progress printed %s; python serve: %s", out, serveErr.String())
	}
	// Alice delegates read:logs to carol; carol calls bob with it.
	pemOut, err := exec.Command(py, script, "delegate", "--home", a, "--to", cID, "--scopes", "read:logs", "--ttl", "10m").Output()
	if err != nil {
		t.Fatalf("python delegate: %v: %s", err, pemOut)
	}
	tok := filepath.Join(c, "delegated.token")
	if err := os.WriteFile(tok, pemOut, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, script, "call", "--home", c, "--to", bID, "--action", "read:logs", "--token", tok).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), `"for": "`+cID+`"`) {
		t.Fatalf("carol's call with the delegated token: %v: %s", err, out)
	}
	// A refused delegation: exit 1, the reason code.
	if out, err := exec.Command(py, script, "delegate", "--home", a, "--to", cID, "--scopes", "write:logs").CombinedOutput(); err == nil || !strings.Contains(string(out), "refused: ") {
		t.Fatalf("a delegation of a scope alice does not hold: %v: %s", err, out)
	}
}
