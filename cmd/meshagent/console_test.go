//go:build meshsim

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// testConsole serves a console of n (in-process, not hooked to its audit
// log) until the test ends.
func testConsole(t *testing.T, n *node.Node, anchor string) *consoleServer {
	t.Helper()
	p := trust.DefaultPolicy()
	k, err := trust.ParsePublicKey(anchor)
	if err != nil {
		t.Fatal(err)
	}
	p.Anchors = []trust.PublicKey{k}
	c, err := newConsole("127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	c.attach(n)
	ctx, cancel := context.WithCancel(context.Background())
	c.start(ctx)
	t.Cleanup(func() { cancel(); c.close() })
	return c
}

// consoleNode starts one enrolled daemon, alice, and returns its node
// and its anchor.
func consoleNode(t *testing.T) (*node.Node, string) {
	t.Helper()
	_, anchor, home, _ := enrolled(t)
	return startDaemon(t, home, daemonConfig("alice", anchor)), anchor
}

// noRedirects is an HTTP client that returns redirects as they are.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// get requests path of the console with mutate applied to the request,
// and returns the status, headers and body.
func consoleGet(t *testing.T, c *consoleServer, method, path string, body io.Reader, mutate func(*http.Request)) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+c.ln.Addr().String()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(req)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (c *consoleServer) withCookie(value string) func(*http.Request) {
	return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: c.cookie, Value: value}) }
}

// Each refusal of the console: without the access token, with a wrong
// one, for another Host (DNS rebinding), from another origin. None of them
// shows anything of the mesh or opens a live tail, and every answer,
// refusals included, carries the security headers. With the token, the
// URL sets an HttpOnly, SameSite=Strict cookie and redirects to a URL
// without it. Live tails are bounded.
func TestConsoleRefusals(t *testing.T) {
	n, anchor := consoleNode(t)
	c := testConsole(t, n, anchor)
	id := n.ID().String()
	hostile := func(r *http.Request) { r.Host = "attacker.example:" + strings.Split(c.ln.Addr().String(), ":")[1] }
	form := func() io.Reader { return strings.NewReader(url.Values{"token": {"x"}}.Encode()) }
	asForm := func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") }
	for _, tc := range []struct {
		name         string
		method, path string
		body         func() io.Reader
		mutate       func(*http.Request)
		want         int
	}{
		{"no token", "GET", "/", nil, nil, 401},
		{"no token, tail", "GET", "/events", nil, nil, 401},
		{"no token, inspector", "POST", "/inspect", form, asForm, 401},
		{"no token, script", "GET", "/static/console.js", nil, nil, 401},
		{"wrong token in the URL", "GET", "/?token=" + strings.Repeat("0", 64), nil, nil, 403},
		{"wrong cookie", "GET", "/", nil, c.withCookie(strings.Repeat("0", 64)), 403},
		{"a prefix of the token", "GET", "/events", nil, c.withCookie(c.token[:63]), 403},
		{"another host, with the cookie", "GET", "/", nil, func(r *http.Request) { c.withCookie(c.token)(r); hostile(r) }, 421},
		{"another host, with the token", "GET", "/?token=" + c.token, nil, hostile, 421},
		{"another origin posts", "POST", "/inspect", form, func(r *http.Request) {
			c.withCookie(c.token)(r)
			asForm(r)
			r.Header.Set("Origin", "http://attacker.example")
		}, 403},
		{"a null origin posts", "POST", "/inspect", form, func(r *http.Request) {
			c.withCookie(c.token)(r)
			asForm(r)
			r.Header.Set("Origin", "null")
		}, 403},
	} {
		var body io.Reader
		if tc.body != nil {
			body = tc.body()
		}
		code, h, got := consoleGet(t, c, tc.method, tc.path, body, tc.mutate)
		if code != tc.want || strings.Contains(got, id) || strings.Contains(got, "<") || strings.Contains(got, "verdict") ||
			h.Get("Set-Cookie") != "" || strings.Count(strings.TrimSpace(got), "\n") != 0 {
			t.Errorf("%s: %d (want %d) %q", tc.name, code, tc.want, got)
		}
		for k, v := range consoleSecurityHeaders {
			if h.Get(k) != v {
				t.Errorf("%s: %s is %q", tc.name, k, h.Get(k))
			}
		}
	}
	c.tail.mu.Lock()
	tails := len(c.tail.tails)
	c.tail.mu.Unlock()
	if tails != 0 {
		t.Fatalf("%d live tails opened by refused requests", tails)
	}

	// The token URL: a cookie scripts cannot read, sent to this site only.
	code, h, _ := consoleGet(t, c, "GET", "/?token="+c.token, nil, nil)
	ck := h.Get("Set-Cookie")
	if code != 303 || h.Get("Location") != "/" || !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Strict") ||
		!strings.HasPrefix(ck, c.cookie+"="+c.token+";") {
		t.Fatalf("the token URL: %d %v", code, h)
	}
	code, h, page := consoleGet(t, c, "GET", "/", nil, c.withCookie(c.token))
	if code != 200 || !strings.Contains(page, id) || h.Get("Content-Security-Policy") == "" {
		t.Fatalf("with the cookie: %d %s", code, page)
	}
	// The same page by the name localhost; the same-origin form.
	if code, _, _ := consoleGet(t, c, "GET", "/", nil, func(r *http.Request) {
		c.withCookie(c.token)(r)
		r.Host = "localhost:" + strings.Split(c.ln.Addr().String(), ":")[1]
	}); code != 200 {
		t.Fatalf("by localhost: %d", code)
	}
	if code, _, page := consoleGet(t, c, "POST", "/inspect", form(), func(r *http.Request) {
		c.withCookie(c.token)(r)
		asForm(r)
		r.Header.Set("Origin", "http://"+c.ln.Addr().String())
	}); code != 200 || !strings.Contains(page, "invalid: malformed") {
		t.Fatalf("the inspector, same origin: %d", code)
	}

	// At most consoleMaxTails live tails; one more is refused.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range consoleMaxTails + 1 {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+c.ln.Addr().String()+"/events", nil)
		c.withCookie(c.token)(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if i < consoleMaxTails && resp.StatusCode != 200 || i == consoleMaxTails && resp.StatusCode != 503 {
			t.Fatalf("tail %d: %d", i+1, resp.StatusCode)
		}
		if i == consoleMaxTails {
			resp.Body.Close()
		}
	}
}

// The daemon refuses a console on an address other than loopback, in one
// line, before it starts.
func TestConsoleOnlyOnLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:0": true, "localhost:7777": true, "[::1]:0": true, "127.0.0.2:80": true,
		"0.0.0.0:7777": false, "[::]:7777": false, "192.168.1.10:7777": false, "example.com:80": false,
		":7777": false, "127.0.0.1": false, "127.0.0.1:99999": false, "127.0.0.1:x": false,
	} {
		_, err := loopbackAddr(addr)
		if (err == nil) != ok || err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v", addr, err)
		}
	}
	_, anchor, home, _ := enrolled(t)
	r := within(t, 20*time.Second, "run", "--home", home, "--anchor", anchor, "--console", "0.0.0.0:0")
	if r.code != 1 || !strings.Contains(r.stderr, "config: console: 0.0.0.0:0 is not a loopback address") || strings.Count(r.stderr, "\n") != 0 {
		t.Fatalf("%+v", r)
	}
}

// blockingWriter is an event stream whose first write blocks until
// released: a page that stopped reading.
type blockingWriter struct {
	h       http.Header
	once    sync.Once
	blocked chan struct{} // closed when the first write blocks
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Header() http.Header { return w.h }
func (w *blockingWriter) WriteHeader(int)     {}
func (w *blockingWriter) Flush()              {}
func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.blocked); <-w.release })
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// A live tail that does not read loses what its queue cannot hold,
// counted, and is told so; the audit hook never waits for it.
func TestConsoleTailDropsForASlowPage(t *testing.T) {
	n, anchor := consoleNode(t)
	c := testConsole(t, n, anchor)
	w := &blockingWriter{h: http.Header{}, blocked: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.serveEvents(w, httptest.NewRequest("GET", "/events", nil).WithContext(ctx))
	}()
	if err := simulations.WaitFor(5*time.Second, func() error {
		c.tail.mu.Lock()
		defer c.tail.mu.Unlock()
		if len(c.tail.tails) != 1 {
			return fmt.Errorf("no tail open")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec := func(i int) node.AuditRecord {
		return node.AuditRecord{Time: time.Now(), Direction: "in", Kind: "request", Action: fmt.Sprintf("read:n%d", i), Decision: "accept"}
	}
	c.tail.add(rec(0))
	<-w.blocked // the tail is stuck writing record 0
	const extra = 44
	start := time.Now()
	for i := 1; i <= consoleTailQueue+extra; i++ {
		c.tail.add(rec(i))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the hook took %s for %d records", d, consoleTailQueue+extra)
	}
	if got := c.tail.dropped.Load(); got != extra {
		t.Fatalf("%d records dropped, want %d", got, extra)
	}
	close(w.release)
	if err := simulations.WaitFor(5*time.Second, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if n := strings.Count(w.buf.String(), "data: "); n != 1+consoleTailQueue+1 {
			return fmt.Errorf("%d events written", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	out := w.buf.String()
	if !strings.Contains(out, fmt.Sprintf("event: dropped\ndata: {\"dropped\":%d}\n", extra)) ||
		!strings.Contains(out, `"action":"read:n256"`) || strings.Contains(out, `"action":"read:n257"`) {
		t.Fatalf("the stream: %.600s", out)
	}
	c.tail.mu.Lock()
	defer c.tail.mu.Unlock()
	if len(c.tail.tails) != 0 {
		t.Fatal("the tail stayed registered after its page left")
	}
}
