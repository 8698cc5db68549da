//go:build meshsim

package main

// The set-up the tests of this package share: running the CLI, a CA with
// enrolled agents, daemons started in-process, clients of their local API,
// fake daemons, and readers of server-sent-event streams.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// result is what one CLI run did.
type result struct {
	code           int
	stdout, stderr string
}

// cli runs the CLI with args, as the binary would, and returns what it did.
func cli(t testing.TB, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{code, strings.TrimSpace(out.String()), strings.TrimSpace(errb.String())}
}

// mustOK runs the CLI with args and returns its stdout, failing the test
// unless it exits 0.
func mustOK(t testing.TB, args ...string) string {
	t.Helper()
	r := cli(t, args...)
	if r.code != 0 {
		t.Fatalf("meshagent %v: exit %d: %s", args, r.code, r.stderr)
	}
	return r.stdout
}

// background runs a CLI command in a goroutine and returns a function that
// waits for it and returns its result.
func background(t *testing.T, args ...string) func() result {
	var out, errb bytes.Buffer
	var code int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		code = run(args, &out, &errb)
	}()
	return func() result {
		wg.Wait()
		return result{code, strings.TrimSpace(out.String()), strings.TrimSpace(errb.String())}
	}
}

// within runs a CLI command and fails the test if it does not exit in d.
func within(t *testing.T, d time.Duration, args ...string) result {
	t.Helper()
	c := make(chan result, 1)
	wait := background(t, args...)
	go func() { c <- wait() }()
	select {
	case r := <-c:
		return r
	case <-time.After(d):
		t.Fatalf("meshagent %v still running after %s", args, d)
	}
	return result{}
}

// syncBuffer is a bytes.Buffer that a daemon may write while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testTokenFile is where testMesh.agent writes an agent's token, in its
// home.
const testTokenFile = "agent.token"

// testMesh is a CA, made with the CLI in a test's temporary directory, and
// the agents enrolled with it, each in a home there named by its initial
// (alice in a, bob in b), or by its name when the initial is taken: the
// API socket's path must stay short.
type testMesh struct {
	t      testing.TB
	dir    string
	ca     string // the CA directory
	anchor string // its anchor ID
}

func newTestMesh(t testing.TB) *testMesh {
	t.Helper()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	return &testMesh{t: t, dir: dir, ca: ca, anchor: mustOK(t, "ca", "init", "--dir", ca)}
}

// agent enrols name: `init` in a new home, a credential from the CA (issue
// adds flags to `ca issue`, "--ttl", "4s" say) and, when scopes is not
// empty, a token for them in testTokenFile. It returns the home, the
// agent's ID and a daemon config for it (not written: the home keeps the
// config init wrote).
func (m *testMesh) agent(name, scopes string, issue ...string) (home, id string, fc *fileConfig) {
	t := m.t
	t.Helper()
	home = filepath.Join(m.dir, name[:1])
	if _, err := os.Stat(home); err == nil {
		home = filepath.Join(m.dir, name)
	}
	id = mustOK(t, "init", "--home", home, "--name", name)
	mustOK(t, append([]string{"ca", "issue", "--dir", m.ca, "--agent", id, "--name", name, "--out", filepath.Join(home, credentialFile)}, issue...)...)
	var tokens []string
	if scopes != "" {
		mustOK(t, "token", "issue", "--ca", m.ca, "--to", id, "--scopes", scopes, "--out", filepath.Join(home, testTokenFile))
		tokens = []string{testTokenFile}
	}
	return home, id, daemonConfig(name, m.anchor, tokens...)
}

// start starts the daemon at home with fc, bootstrapping from the first
// address of each of from, and returns its node.
func (m *testMesh) start(home string, fc *fileConfig, from ...*node.Node) *node.Node {
	m.t.Helper()
	for _, n := range from {
		fc.Bootstrap = append(fc.Bootstrap, n.Addrs()[0].String())
	}
	return startDaemon(m.t, home, fc)
}

// join enrols one more agent (a token for scopes) and starts its daemon,
// bootstrapping from the daemon at peerHome, which it finds through that
// daemon's local API. It returns the new home.
func (m *testMesh) join(name, scopes, peerHome string) string {
	t := m.t
	t.Helper()
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "status", "--home", peerHome)), &st); err != nil || len(st.ListenAddrs) == 0 {
		t.Fatalf("status of %s: %+v %v", peerHome, st, err)
	}
	home, _, fc := m.agent(name, scopes)
	fc.Bootstrap = st.ListenAddrs[:1]
	startDaemon(t, home, fc)
	return home
}

// enrolled makes a CA and one enrolled agent, alice, without a token, and
// returns the temporary directory (the CA is its "ca"), the anchor ID,
// alice's home and her ID.
func enrolled(t *testing.T) (dir, anchor, home, id string) {
	t.Helper()
	m := newTestMesh(t)
	home, id, _ = m.agent("alice", "")
	return m.dir, m.anchor, home, id
}

// twoDaemons makes a CA and two enrolled agents, alice (a token for
// aScopes) and bob (bScopes; none when empty), starts bob's daemon and then
// alice's, bootstrapping from bob. adjust, if not nil, edits each config
// first. It returns the mesh, the homes and the IDs.
func twoDaemons(t testing.TB, aScopes, bScopes string, adjust func(name string, fc *fileConfig)) (m *testMesh, a, b, aID, bID string) {
	t.Helper()
	m = newTestMesh(t)
	a, aID, fa := m.agent("alice", aScopes)
	b, bID, fb := m.agent("bob", bScopes)
	if adjust != nil {
		adjust("bob", fb)
		adjust("alice", fa)
	}
	m.start(a, fa, m.start(b, fb))
	return m, a, b, aID, bID
}

// pair is twoDaemons with alice holding ping:agent, read:logs and
// publish:tasks, and bob publish:tasks.
func pair(t *testing.T) (a, b, aID, bID string) {
	t.Helper()
	_, a, b, aID, bID = twoDaemons(t, "ping:agent,read:logs,publish:tasks", "publish:tasks", nil)
	return a, b, aID, bID
}

// admitted waits at most d until the daemon at home lists peer among its
// peers.
func admitted(t testing.TB, home, peer string, d time.Duration) {
	t.Helper()
	if err := simulations.WaitFor(d, func() error {
		if out := mustOK(t, "peers", "--home", home); !strings.Contains(out, peer) {
			return fmt.Errorf("the daemon at %s has not admitted %s: %s", home, peer, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// daemonConfig is the config of a test daemon: it listens on a free
// loopback TCP port, trusts anchor, holds the token files tokens (in its
// home) and writes audit.log and api.sock in its home.
func daemonConfig(name, anchor string, tokens ...string) *fileConfig {
	return &fileConfig{Name: name, Listen: []string{"/ip4/127.0.0.1/tcp/0"}, Anchors: []string{anchor},
		Credential: credentialFile, Tokens: tokens, AuditLog: "audit.log", APISocket: "api.sock"}
}

// daemonLog is where a test daemon at home writes its lines: they go to
// the test's log if the test fails.
func daemonLog(t testing.TB, home string) io.Writer {
	log := new(syncBuffer)
	t.Cleanup(func() {
		if t.Failed() && log.String() != "" {
			t.Logf("daemon %s said:\n%s", home, log.String())
		}
	})
	return log
}

// startDaemon starts the daemon at home with fc, stopped at the test's end
// (an error it then returns fails the test), and returns its node once its
// local API listens. Its lines go to the test's log if the test fails.
func startDaemon(t testing.TB, home string, fc *fileConfig) *node.Node {
	t.Helper()
	return startDaemonLogging(t, home, fc, daemonLog(t, home))
}

// startDaemonLogging is startDaemon with the daemon's lines on logw.
func startDaemonLogging(t testing.TB, home string, fc *fileConfig, logw io.Writer) *node.Node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *node.Node, 1)
	done := make(chan error, 1)
	go func() { done <- serveDaemon(ctx, home, fc, func(n *node.Node) { ready <- n }, logw) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon %s: %v", home, err)
		}
	})
	select {
	case n := <-ready:
		return n
	case err := <-done:
		done <- nil // for the clean-up
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not start in time")
	}
	return nil
}

// apiCall does one request to the local API of the daemon at home, as the
// CLI does, and copies the answer to out.
func apiCall(home, method, path string, in any, out io.Writer) error {
	c, err := newLocalClient(home)
	if err != nil {
		return err
	}
	return c.call(context.Background(), method, path, in, out)
}

// events streams path from the local API of the daemon at home, as the
// CLI does (see localClient.events).
func events(ctx context.Context, home, path string, f func(data []byte) (bool, error)) error {
	c, err := newLocalClient(home)
	if err != nil {
		return err
	}
	return c.events(ctx, path, f)
}

// apiHTTP is an HTTP client of the local API of the daemon at home, for
// requests the CLI does not make.
func apiHTTP(t *testing.T, home string) *http.Client {
	t.Helper()
	c, err := newLocalClient(home)
	if err != nil {
		t.Fatal(err)
	}
	return c.http
}

// scrape returns home's /metrics page.
func scrape(t *testing.T, home string) string {
	t.Helper()
	var out strings.Builder
	resp, err := apiHTTP(t, home).Get("http://meshagent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(&out, resp.Body); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// metricSum adds the samples of metric name on page whose labels hold
// every one of labels (each `key="value"`).
func metricSum(page, name string, labels ...string) float64 {
	sum := 0.0
	for _, l := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || (rest == "" || (rest[0] != ' ' && rest[0] != '{')) {
			continue
		}
		all := true
		for _, want := range labels {
			all = all && strings.Contains(rest, want)
		}
		if !all {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// fakeAPI serves h as the local API of a daemon in a new home, until the
// test ends, and returns the home (its config names the socket and nothing
// else).
func fakeAPI(t *testing.T, h http.Handler) string {
	t.Helper()
	home, err := os.MkdirTemp("", "fake") // short: a socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.WriteFile(filepath.Join(home, configFile), []byte("api_socket: api.sock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(home, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return home
}

// getStream GETs path on home's API and returns the open response (closed
// at the test's end), or the status and error body when the API refused it.
func getStream(t *testing.T, home, path string) (*http.Response, int, string) {
	t.Helper()
	c := apiHTTP(t, home)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://meshagent"+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp.StatusCode, strings.TrimSpace(string(body))
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp, 200, ""
}

// sseEvent is one server-sent event.
type sseEvent struct {
	name, data string
}

// rawStream is a server-sent-event stream that the test reads only when
// it chooses to: until then the daemon's writes back up.
type rawStream struct {
	resp *http.Response
	br   *bufio.Reader
}

func openRawStream(t *testing.T, home, path string) *rawStream {
	t.Helper()
	resp, code, body := getStream(t, home, path)
	if resp == nil {
		t.Fatalf("%s: %d %s", path, code, body)
	}
	return newRawStream(resp)
}

func newRawStream(resp *http.Response) *rawStream {
	return &rawStream{resp: resp, br: bufio.NewReaderSize(resp.Body, 64<<10)}
}

// read returns the next event, or an error when the stream ended.
func (s *rawStream) read() (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev, nil
			}
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
}

// readWithin is read in the background, failing the test after d.
func (s *rawStream) readWithin(t *testing.T, d time.Duration) (sseEvent, error) {
	t.Helper()
	type res struct {
		ev  sseEvent
		err error
	}
	c := make(chan res, 1)
	go func() { ev, err := s.read(); c <- res{ev, err} }()
	select {
	case r := <-c:
		return r.ev, r.err
	case <-time.After(d):
		s.resp.Body.Close()
		t.Fatalf("no event in %s", d)
	}
	return sseEvent{}, nil
}

// sseStream is an open server-sent-event stream on a local API, read in
// the background: the data of each event, whatever its type, in lines.
type sseStream struct {
	resp  *http.Response
	lines chan string
}

// openStream GETs path on home's API and returns the stream, or the status
// and error body when the API refused it.
func openStream(t *testing.T, home, path string) (*sseStream, int, string) {
	t.Helper()
	resp, code, body := getStream(t, home, path)
	if resp == nil {
		return nil, code, body
	}
	s := &sseStream{resp: resp, lines: make(chan string, 16)}
	go func() {
		defer close(s.lines)
		r := newRawStream(resp)
		for {
			ev, err := r.read()
			if err != nil {
				return
			}
			s.lines <- ev.data
		}
	}()
	return s, 200, ""
}

func (s *sseStream) close() { s.resp.Body.Close() }

// next returns the next event's data, or fails the test after d.
func (s *sseStream) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			t.Fatal("the stream ended")
		}
		return l
	case <-time.After(d):
		t.Fatalf("no event in %s", d)
	}
	return ""
}
