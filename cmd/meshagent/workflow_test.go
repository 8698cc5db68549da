//go:build meshsim

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// Issue 14 section 5 through real daemons: a configured token of another
// agent is said at start and not loaded; /v1/send takes a token of this
// agent's for one call (and refuses another's), a correlation ID and W3C
// trace context, which bob's /v1/handle process and both audit logs get;
// /v1/delegate and 'token delegate --daemon' sign narrower tokens with the
// CLI's refusals.
func TestLocalAPIWorkflow(t *testing.T) {
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "")
	b, bID, fb := m.agent("bob", "read:logs")
	c, cID, _ := m.agent("carol", "")
	// Alice's own token, delegatable in part; and bob's, which she must
	// not be able to use.
	own := filepath.Join(a, "own.token")
	mustOK(t, "token", "issue", "--ca", m.ca, "--to", aID, "--scopes", "read:logs,read:slow", "--delegatable", "read:logs", "--out", own)
	fa.Tokens = []string{filepath.Join(b, testTokenFile), "own.token"}
	bn := m.start(b, fb)
	fa.Bootstrap = append(fa.Bootstrap, bn.Addrs()[0].String())
	alog := new(syncBuffer)
	startDaemonLogging(t, a, fa, alog)
	if want := "meshagent: config: tokens: " + filepath.Join(b, testTokenFile) + " is held by " + bID + ", not by this agent (" + aID + "): not loaded"; !strings.Contains(alog.String(), want) {
		t.Fatalf("alice's daemon did not warn:\n%s", alog.String())
	}
	admitted(t, a, bID, 10*time.Second)
	if out := mustOK(t, "tokens", "--home", a); strings.Contains(out, bID) {
		t.Fatalf("bob's token was loaded: %s", out)
	}

	pemOf := func(path string) string {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	handle := openRawStream(t, b, "/v1/handle?action=read:logs")
	const tp, ts = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=abc"
	corr := strings.Repeat("ab", 16)
	done := make(chan [2]any, 1)
	go func() {
		code, body := postJSON(t, a, "/v1/send", map[string]any{"to": bID, "action": "read:logs", "token": pemOf(own),
			"correlation_id": corr, "traceparent": tp, "tracestate": ts})
		done <- [2]any{code, body}
	}()
	ev, err := handle.readWithin(t, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"correlation_id":"` + corr + `"`, `"traceparent":"` + tp + `"`, `"tracestate":"` + ts + `"`} {
		if !strings.Contains(ev.data, want) {
			t.Fatalf("bob's process got %s, without %s", ev.data, want)
		}
	}
	if code, body := postJSON(t, b, "/v1/reply", map[string]any{"id": eventID(t, ev), "body": "ok"}); code != 200 {
		t.Fatalf("reply: %d %s", code, body)
	}
	if r := <-done; r[0] != 200 || !strings.Contains(r[1].(string), `"correlation_id":"`+corr+`"`) {
		t.Fatalf("the call with alice's own token: %v", r)
	}
	for _, home := range []string{a, b} {
		data, _ := os.ReadFile(filepath.Join(home, "audit.log"))
		if !strings.Contains(string(data), `"correlation_id":"`+corr+`","traceparent":"`+tp+`","tracestate":"`+ts+`"`) {
			t.Fatalf("%s's audit log has no line with the correlation ID and trace context:\n%s", home, data)
		}
	}
	// Refused before anything is sent: one line each.
	for _, c := range []struct {
		in   map[string]any
		want string
	}{
		{map[string]any{"to": bID, "action": "read:logs", "token": pemOf(filepath.Join(b, testTokenFile))}, `"code":"not_holder"`},
		{map[string]any{"to": bID, "action": "read:logs", "token": "not a token"}, `"error":"token:`},
		{map[string]any{"to": bID, "action": "read:logs", "correlation_id": "xyz"}, `"code":"malformed"`},
		{map[string]any{"to": bID, "action": "read:logs", "traceparent": strings.Repeat("a", 100)}, `"code":"malformed"`},
		{map[string]any{"to": bID, "action": "read:logs", "tracestate": "x=y"}, `tracestate without traceparent`},
	} {
		if code, body := postJSON(t, a, "/v1/send", c.in); code != 400 || !strings.Contains(body, c.want) || strings.Contains(body, "\n") {
			t.Fatalf("/v1/send %v: %d %s, want 400 with %s", c.in["token"] != nil, code, body, c.want)
		}
	}
	select {
	case ev := <-func() chan sseEvent {
		ch := make(chan sseEvent, 1)
		go func() {
			if ev, err := handle.read(); err == nil {
				ch <- ev
			}
		}()
		return ch
	}():
		t.Fatalf("bob's process saw a refused call: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}

	// Runtime delegation, as the CLI's.
	code, body := postJSON(t, a, "/v1/delegate", map[string]any{"to": cID, "scopes": []string{"read:logs"}, "ttl": "10m"})
	if code != 200 {
		t.Fatalf("/v1/delegate: %d %s", code, body)
	}
	var ans struct{ Token string }
	_ = json.Unmarshal([]byte(body), &ans)
	raw, err := trust.DecodePEM([]byte(ans.Token), trust.PEMToken)
	if err != nil {
		t.Fatal(err)
	}
	nt, err := trust.ParseToken(raw, trust.DefaultMaxTokenSize)
	if err != nil || nt.Holder().String() != cID || strings.Join(nt.Leaf().Scopes, ",") != "read:logs" {
		t.Fatalf("delegated token: %v %+v", err, nt)
	}
	for _, c := range []struct {
		in   map[string]any
		code string
	}{
		{map[string]any{"to": cID, "scopes": []string{"read:slow"}, "token": pemOf(own)}, "escalation"},
		{map[string]any{"to": cID, "scopes": []string{"read:*"}, "token": pemOf(own)}, "wildcard"},
		{map[string]any{"to": cID, "scopes": []string{"read:logs"}, "token": pemOf(own), "ttl": "10000h"}, "escalation"},
		{map[string]any{"to": cID, "scopes": []string{"read:logs"}, "token": pemOf(filepath.Join(b, testTokenFile))}, "not_holder"},
	} {
		code, body := postJSON(t, a, "/v1/delegate", c.in)
		if code/100 != 4 || !strings.Contains(body, `"code":"`+c.code+`"`) || strings.Contains(body, "\n") {
			t.Fatalf("/v1/delegate %v: %d %s, want %s", c.in["scopes"], code, body, c.code)
		}
		// The CLI, offline, refuses the same.
		if c.in["ttl"] == nil && c.code != "not_holder" {
			r := cli(t, "token", "delegate", "--home", a, "--token", own, "--to", cID, "--scopes", strings.Join(toStrings(c.in["scopes"]), ","), "--ttl", "10m", "--out", filepath.Join(t.TempDir(), "x"))
			if r.code == 0 || !strings.Contains(r.stderr, c.code) {
				t.Fatalf("the CLI: %+v, want %s", r, c.code)
			}
		}
	}
	out := filepath.Join(c, "from-daemon.token")
	mustOK(t, "token", "delegate", "--daemon", "--home", a, "--token", own, "--to", cID, "--scopes", "read:logs", "--ttl", "10m", "--out", out)
	if dt := loadTokenFile(t, out); dt.Holder().String() != cID {
		t.Fatalf("token delegate --daemon: holder %s", dt.Holder())
	}
	if r := cli(t, "token", "delegate", "--daemon", "--home", a, "--token", own, "--to", cID, "--scopes", "read:slow", "--ttl", "10m", "--out", out+"2"); r.code == 0 ||
		!strings.Contains(r.stderr, "escalation") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Fatalf("token delegate --daemon of a scope not delegatable: %+v", r)
	}
}

func toStrings(v any) []string { return v.([]string) }
