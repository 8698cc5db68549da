//go:build meshsim

package main

// End-to-end tests of `meshagent mcp` and `meshagent mcp serve` over real
// daemons on loopback, with the MCP SDK's own client and server. The test
// binary is re-executed as the child MCP server (MESHAGENT_MCP_HELPER=server)
// and as the `meshagent mcp` process an MCP client launches over stdio
// (MESHAGENT_MCP_HELPER=cli).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

const (
	mcpHelperEnv   = "MESHAGENT_MCP_HELPER"       // server or cli
	mcpHelperArgs  = "MESHAGENT_MCP_HELPER_ARGS"  // cli: the CLI's arguments, JSON
	mcpHelperCount = "MESHAGENT_MCP_HELPER_COUNT" // server: a file that gets a line per tool run
	mcpHelperExtra = "MESHAGENT_MCP_HELPER_EXTRA" // server: one more tool, of this name
)

// TestMCPHelperProcess is not a test: it is what the test binary does when
// the tests below run it as a child.
func TestMCPHelperProcess(t *testing.T) {
	switch os.Getenv(mcpHelperEnv) {
	case "server":
		runHelperMCPServer()
		os.Exit(0)
	case "cli":
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv(mcpHelperArgs)), &args); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		os.Exit(run(args, os.Stdout, os.Stderr))
	}
}

// runHelperMCPServer is a stdio MCP server built with the SDK: its tools
// echo, shout, fail, crash (the process exits), sleep, grow and shrink
// (which add and remove the tool grown), and one tool nobody holds a
// token for. Each tool run appends its name to the count file
// before it does anything else.
func runHelperMCPServer() {
	fmt.Fprintf(os.Stderr, "helper server up, pid %d\n", os.Getpid())
	ran := func(name string) {
		f, err := os.OpenFile(os.Getenv(mcpHelperCount), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			fmt.Fprintln(f, name)
			f.Close()
		}
	}
	type in struct {
		Text string `json:"text,omitempty"`
	}
	type out struct {
		Said string `json:"said"`
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "helper", Version: "1"}, nil)
	add := func(name string, f func(in) (out, error)) {
		mcp.AddTool(s, &mcp.Tool{Name: name, Description: "test tool " + name}, func(_ context.Context, _ *mcp.CallToolRequest, a in) (*mcp.CallToolResult, out, error) {
			ran(name)
			o, err := f(a)
			return nil, o, err
		})
	}
	add("echo", func(a in) (out, error) { return out{"echo: " + a.Text}, nil })
	add("Shout.Loud", func(a in) (out, error) { return out{strings.ToUpper(a.Text)}, nil })
	add("fail", func(in) (out, error) { return out{}, errors.New("it failed on purpose") })
	add("crash", func(in) (out, error) { os.Exit(3); return out{}, nil })
	add("sleep", func(in) (out, error) { time.Sleep(1500 * time.Millisecond); return out{"slept"}, nil })
	add("secret", func(in) (out, error) { return out{"the secret"}, nil })
	addLongTools(s, ran) // mcp_longcalls_test.go
	if extra := os.Getenv(mcpHelperExtra); extra != "" {
		add(extra, func(in) (out, error) { return out{"extra"}, nil })
	}
	// grow adds the tool grown while the server runs, and shrink removes
	// it: the SDK tells the client with tools/list_changed.
	add("grow", func(in) (out, error) {
		add("grown", func(in) (out, error) { return out{"grown"}, nil })
		return out{"grew"}, nil
	})
	add("shrink", func(in) (out, error) { s.RemoveTools("grown"); return out{"shrank"}, nil })
	_ = s.Run(context.Background(), &mcp.StdioTransport{})
}

// mcpSession launches `meshagent mcp --home home` (with extra flags) as
// an MCP server over stdio, connects opts' client to it, and closes it at
// the end of the test, showing its stderr if the test failed. It returns
// the session and that stderr.
func mcpSession(t *testing.T, home string, opts *mcp.ClientOptions, flags ...string) (*mcp.ClientSession, *syncBuffer) {
	t.Helper()
	args, _ := json.Marshal(append([]string{"mcp", "--home", home}, flags...))
	client := mcp.NewClient(&mcp.Implementation{Name: "test-client", Version: "1"}, opts)
	cliErr := new(syncBuffer)
	cmd := helperCommand("cli", mcpHelperArgs+"="+string(args))
	cmd.Stderr = cliErr
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	s, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	cancel()
	if err != nil {
		t.Fatalf("connect to meshagent mcp: %v (its stderr: %s)", err, cliErr.String())
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("meshagent mcp said:\n%s", cliErr.String())
		}
	})
	return s, cliErr
}

// helperCommand is the test binary run as a helper of role, with env.
func helperCommand(role string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestMCPHelperProcess$")
	cmd.Env = append(append(os.Environ(), mcpHelperEnv+"="+role), env...)
	return cmd
}

// toolRuns returns how many times the helper server ran each tool.
func toolRuns(t *testing.T, file string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	runs := map[string]int{}
	for _, l := range strings.Fields(string(data)) {
		runs[l]++
	}
	return runs
}

// serveCLI runs the CLI in the background until the test ends, with its
// stderr in a buffer; the returned function stops it and returns its exit
// code.
func serveCLI(t *testing.T, args ...string) (*syncBuffer, func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr := new(syncBuffer)
	done := make(chan int, 1)
	go func() { done <- runContext(ctx, args, new(syncBuffer), stderr) }()
	code, stopped := 0, false
	stop := func() int {
		if !stopped {
			cancel()
			select {
			case code = <-done:
			case <-time.After(15 * time.Second):
				t.Errorf("meshagent %v did not stop in 15s", args)
			}
			stopped = true
		}
		return code
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("meshagent %v said:\n%s", args, stderr.String())
		}
	})
	return stderr, stop
}

// mcpResult is what a tool call returned: its text and structured content.
type mcpResult struct {
	isError    bool
	text       string
	structured map[string]any
}

func callTool(t *testing.T, s *mcp.ClientSession, name string, args map[string]any) mcpResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s %v: a protocol error, want a tool result: %v", name, args, err)
	}
	r := mcpResult{isError: res.IsError}
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			r.text += tc.Text
		}
	}
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		_ = json.Unmarshal(b, &r.structured)
	}
	return r
}

// meshCall calls mesh_call and returns the result.
func meshCall(t *testing.T, s *mcp.ClientSession, to, action, body string, extra ...string) mcpResult {
	t.Helper()
	args := map[string]any{"to": to, "action": action, "body": body}
	for i := 0; i+1 < len(extra); i += 2 {
		args[extra[i]] = extra[i+1]
	}
	return callTool(t, s, "mesh_call", args)
}

// wantRefused checks that r is an error result with code.
func wantRefused(t *testing.T, what string, r mcpResult, code string) {
	t.Helper()
	if !r.isError || r.structured["code"] != code || !strings.Contains(r.text, code) {
		t.Fatalf("%s: want an error result with code %s, got %+v", what, code, r)
	}
}

// replyOf decodes the structured result of a successful mesh_call to an
// `mcp serve` tool: the signed reply, whose body is the tool's result.
func replyOf(t *testing.T, what string, r mcpResult) (from string, said string) {
	t.Helper()
	if r.isError {
		t.Fatalf("%s: error result: %s", what, r.text)
	}
	var rep struct {
		From string `json:"from"`
		Body struct {
			Content           []map[string]any `json:"content"`
			StructuredContent struct {
				Said string `json:"said"`
			} `json:"structuredContent"`
		} `json:"body"`
	}
	b, _ := json.Marshal(r.structured)
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Body.Content) == 0 {
		t.Fatalf("%s: reply %s: %v", what, b, err)
	}
	return rep.From, rep.Body.StructuredContent.Said
}

// toolDescription returns the description of the tool name as s lists it.
func toolDescription(t *testing.T, s *mcp.ClientSession, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tl := range res.Tools {
		if tl.Name == name {
			return tl.Description
		}
	}
	t.Fatalf("no tool %s in %d tools", name, len(res.Tools))
	return ""
}

// waitChanged waits for a tools/list_changed notification and then for
// mesh_call's description to satisfy ok.
func waitChanged(t *testing.T, s *mcp.ClientSession, changed <-chan struct{}, what string, ok func(desc string) bool) {
	t.Helper()
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no notifications/tools/list_changed in 20s", what)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		if d := toolDescription(t, s, "mesh_call"); !ok(d) {
			return fmt.Errorf("%s: mesh_call's description is %q", what, d)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestMCPEndToEnd: an SDK client talks to `meshagent mcp` (the CLI over
// stdio) on bob's daemon; alice's daemon serves an SDK-built MCP server
// behind `meshagent mcp serve`. Bob holds a token for some of its tools.
func TestMCPEndToEnd(t *testing.T) {
	// Restored by a cleanup registered before mcp serve starts: it runs
	// after mcp serve has stopped reading it.
	oldRestart := mcpRestartMin
	t.Cleanup(func() { mcpRestartMin = oldRestart })
	mcpRestartMin = 50 * time.Millisecond

	m := newTestMesh(t)
	shout := "mcp.files:" + mcpResource("Shout.Loud")
	a, aID, fa := m.agent("alice", "")
	b, _, fb := m.agent("bob", "mcp.files:echo,"+shout+",mcp.files:fail,mcp.files:crash,mcp.files:sleep")
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)

	count := t.TempDir() + "/runs"
	t.Setenv(mcpHelperEnv, "server") // for the child of mcp serve
	t.Setenv(mcpHelperCount, count)
	serveErr, _ := serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")

	// The MCP client launches `meshagent mcp` over stdio.
	changed := make(chan struct{}, 64)
	s, _ := mcpSession(t, b, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { changed <- struct{}{} },
	}, "--refresh", "200ms")
	t.Logf("protocol version %s", s.InitializeResult().ProtocolVersion)

	// The tools: mesh_peers and mesh_call, which names alice.
	if d := toolDescription(t, s, "mesh_call"); !strings.Contains(d, "alice ("+aID+")") {
		t.Fatalf("mesh_call's description does not name alice: %q", d)
	}
	peers := callTool(t, s, "mesh_peers", nil)
	if peers.isError || !strings.Contains(peers.text, aID) || !strings.Contains(peers.text, `"alice"`) {
		t.Fatalf("mesh_peers: %+v", peers)
	}

	// A tool call end to end, by name (the first calls may come before
	// mcp serve registered the action: no_handler).
	var r mcpResult
	if err := simulations.WaitFor(15*time.Second, func() error {
		if r = meshCall(t, s, "alice", "mcp.files:echo", `{"text":"hi"}`); r.isError {
			return fmt.Errorf("echo: %s", r.text)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if from, said := replyOf(t, "echo", r); from != aID || said != "echo: hi" {
		t.Fatalf("echo: from %s said %q", from, said)
	}
	// A tool whose name is not a scope, by peer ID.
	if _, said := replyOf(t, "shout", meshCall(t, s, aID, shout, `{"text":"hi"}`)); said != "HI" {
		t.Fatalf("Shout.Loud said %q", said)
	}
	if !strings.Contains(serveErr.String(), `tool "Shout.Loud" is served as `+shout) {
		t.Fatalf("mcp serve did not say the mapping: %s", serveErr.String())
	}

	// A second mcp serve of the same tools is refused by the daemon.
	second := within(t, 20*time.Second, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")
	if last := second.stderr[strings.LastIndex(second.stderr, "\n")+1:]; second.code != 1 || !strings.Contains(last, "already_handled") {
		t.Fatalf("a second mcp serve: %+v", second)
	}

	before := toolRuns(t, count)
	if before["echo"] != 1 || before["Shout.Loud"] != 1 {
		t.Fatalf("tool runs %v, want echo and Shout.Loud once", before)
	}
	// Refused by the mesh, or before it: error results, and the child's
	// tool never runs.
	wantRefused(t, "no token", meshCall(t, s, "alice", "mcp.files:secret", "{}"), "no_token")
	wantRefused(t, "malformed action", meshCall(t, s, "alice", "mcp.files:Secret", "{}"), "malformed")
	wantRefused(t, "unknown agent", meshCall(t, s, "mallory", "mcp.files:echo", "{}"), mcpCodeUnknownAgent)
	wantRefused(t, "bad timeout", meshCall(t, s, "alice", "mcp.files:echo", "{}", "timeout", "soon"), mcpCodeBadInput)
	wantRefused(t, "unknown argument", callTool(t, s, "mesh_call", map[string]any{"to": "alice", "action": "mcp.files:echo", "bogus": 1}), mcpCodeBadInput)
	wantRefused(t, "not an object", meshCall(t, s, "alice", "mcp.files:echo", `[1,2]`), "handler_error")
	if after := toolRuns(t, count); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused call ran a tool: runs %v, before %v", after, before)
	}

	// A tool error is the handler's error.
	r = meshCall(t, s, "alice", "mcp.files:fail", "{}")
	wantRefused(t, "tool error", r, "handler_error")
	if !strings.Contains(r.text, "it failed on purpose") {
		t.Fatalf("tool error: %s", r.text)
	}
	// A timeout is an error result too.
	r = meshCall(t, s, "alice", "mcp.files:sleep", "{}", "timeout", "300ms")
	if !r.isError || r.structured["code"] == "" {
		t.Fatalf("timeout: %+v", r)
	}
	t.Logf("a call that timed out: %s", r.text)

	// The child crashes during a call: the caller is told, the child
	// restarts, and the next call works.
	r = meshCall(t, s, "alice", "mcp.files:crash", "{}")
	wantRefused(t, "crash", r, "handler_error")
	if !strings.Contains(r.text, "MCP server files exited during the call") {
		t.Fatalf("crash: %s", r.text)
	}
	if err := simulations.WaitFor(15*time.Second, func() error {
		if r = meshCall(t, s, "alice", "mcp.files:echo", `{"text":"again"}`); r.isError {
			return fmt.Errorf("echo after the crash: %s", r.text)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, said := replyOf(t, "echo again", r); said != "echo: again" {
		t.Fatalf("echo after the crash said %q", said)
	}
	if up := strings.Count(serveErr.String(), "[mcp files] helper server up"); up != 2 {
		t.Fatalf("the child started %d times, want 2 (its stderr prefixed): %s", up, serveErr.String())
	}
	if !regexp.MustCompile(`the MCP server it exited \(exit status 3\); restarting it in`).MatchString(serveErr.String()) {
		t.Fatalf("mcp serve did not say the child exited: %s", serveErr.String())
	}

	// Agents join and leave: the tool list changes.
	for len(changed) > 0 {
		<-changed
	}
	c, cID, fc := m.agent("carol", "")
	fc.Bootstrap = []string{mustAddr(t, a)}
	cctx, stopCarol := context.WithCancel(context.Background())
	carolDone := make(chan error, 1)
	carolUp := make(chan *node.Node, 1)
	go func() { carolDone <- serveDaemon(cctx, c, fc, func(n *node.Node) { carolUp <- n }, daemonLog(t, c)) }()
	t.Cleanup(func() { stopCarol(); <-carolDone })
	select {
	case <-carolUp:
	case err := <-carolDone:
		t.Fatalf("carol: %v", err)
	}
	waitChanged(t, s, changed, "carol joined", func(d string) bool { return strings.Contains(d, "carol ("+cID+")") })
	for len(changed) > 0 {
		<-changed
	}
	stopCarol()
	if err := <-carolDone; err != nil {
		t.Fatalf("carol: %v", err)
	}
	carolDone <- nil // for the clean-up
	waitChanged(t, s, changed, "carol left", func(d string) bool { return !strings.Contains(d, "carol") })
	before = toolRuns(t, count)
	r = meshCall(t, s, "carol", "mcp.files:echo", "{}")
	if !r.isError || r.structured["code"] == "" {
		t.Fatalf("a call to a stopped agent: %+v", r)
	}
	t.Logf("a call to a stopped agent: %s", r.text)
	if after := toolRuns(t, count); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a call to carol ran a tool: runs %v, before %v", after, before)
	}

	// The same over streamable HTTP, on loopback only.
	if r := cli(t, "mcp", "--home", b, "--http", "0.0.0.0:0"); r.code != 2 || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, "not a loopback address") {
		t.Fatalf("mcp --http 0.0.0.0:0: %+v", r)
	}
	httpErr, _ := serveCLI(t, "mcp", "--home", b, "--http", "127.0.0.1:0")
	var endpoint string
	if err := simulations.WaitFor(10*time.Second, func() error {
		m := regexp.MustCompile(`serving MCP on (http://\S+/mcp)`).FindStringSubmatch(httpErr.String())
		if m == nil {
			return fmt.Errorf("no address yet: %s", httpErr.String())
		}
		endpoint = m[1]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	hs, err := mcp.NewClient(&mcp.Implementation{Name: "http-client", Version: "1"}, nil).Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint}, nil)
	cancel()
	if err != nil {
		t.Fatalf("connect to %s: %v", endpoint, err)
	}
	defer hs.Close()
	if _, said := replyOf(t, "echo over HTTP", meshCall(t, hs, aID, "mcp.files:echo", `{"text":"http"}`)); said != "echo: http" {
		t.Fatalf("echo over HTTP said %q", said)
	}
	wantRefused(t, "no token over HTTP", meshCall(t, hs, aID, "mcp.files:secret", "{}"), "no_token")
	if runs := toolRuns(t, count); runs["secret"] != 0 {
		t.Fatalf("secret ran %d times", runs["secret"])
	}

	// The MCP client goes away: meshagent mcp exits by itself (Close
	// would send SIGTERM after 5 s).
	start := time.Now()
	if err := s.Close(); err != nil || time.Since(start) > 4*time.Second {
		t.Fatalf("meshagent mcp exited after %s: %v", time.Since(start), err)
	}
}

func jsonString(s string) string { b, _ := json.Marshal(s); return string(b) }

// mustAddr returns the first listen address of the daemon at home.
func mustAddr(t *testing.T, home string) string {
	t.Helper()
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "status", "--home", home)), &st); err != nil || len(st.ListenAddrs) == 0 {
		t.Fatalf("status of %s: %+v %v", home, st, err)
	}
	return st.ListenAddrs[0]
}

// TestMCPServeRefusals: mcp serve says in one line what it cannot serve,
// before it serves anything.
func TestMCPServeRefusals(t *testing.T) {
	home := fakeAPI(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status" {
			writeJSON(w, 200, map[string]string{"peer_id": "x", "name": "fake"})
			return
		}
		writeJSON(w, 404, apiError{Error: "not here"})
	}))
	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, t.TempDir()+"/runs")
	child := []string{"--", os.Args[0], "-test.run=^TestMCPHelperProcess$"}

	// Two tools that map to one scope.
	derived := mcpResource("Shout.Loud")
	t.Setenv(mcpHelperExtra, derived)
	r := within(t, 20*time.Second, append([]string{"mcp", "serve", "--home", home, "--name", "files"}, child...)...)
	// (The child's stderr, prefixed, comes first.)
	if last := r.stderr[strings.LastIndex(r.stderr, "\n")+1:]; r.code != 1 || !strings.HasPrefix(last, "meshagent: tools ") ||
		!strings.Contains(last, `"Shout.Loud"`) || !strings.Contains(last, `"`+derived+`"`) {
		t.Fatalf("collision: %+v", r)
	}
	t.Setenv(mcpHelperExtra, "")

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--name", "Files"}, 2, "--name"},
		{[]string{"--name", "files", "--", "/nonexistent/mcp-server"}, 1, "starting /nonexistent/mcp-server"},
		{[]string{"--name", "files", "/bin/true"}, 2, "after --"},
	} {
		args := append([]string{"mcp", "serve", "--home", home}, c.args...)
		if c.code == 2 && c.want == "--name" {
			args = append(args, child...)
		}
		r := within(t, 20*time.Second, args...)
		if r.code != c.code || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("meshagent %v: %+v, want exit %d and %q", c.args, r, c.code, c.want)
		}
	}
	// No daemon: one line, and no child is started.
	down := t.TempDir()
	if err := os.WriteFile(filepath.Join(down, configFile), []byte("api_socket: api.sock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = within(t, 10*time.Second, append([]string{"mcp", "serve", "--home", down, "--name", "files"}, child...)...)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, "is 'meshagent run' running?") {
		t.Fatalf("no daemon: %+v", r)
	}
}

// TestMCPServeDaemonRestart: when the daemon behind mcp serve stops and
// starts again, mcp serve opens its streams again and serves as before.
func TestMCPServeDaemonRestart(t *testing.T) {
	// Restored by a cleanup registered before mcp serve starts: it runs
	// after mcp serve has stopped reading it.
	oldRestart := mcpRestartMin
	t.Cleanup(func() { mcpRestartMin = oldRestart })
	mcpRestartMin = 50 * time.Millisecond

	m := newTestMesh(t)
	b, _, fb := m.agent("bob", "mcp.files:echo")
	a, aID, fa := m.agent("alice", "")
	fa.Bootstrap = []string{m.start(b, fb).Addrs()[0].String()}
	startAlice := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done, up := make(chan error, 1), make(chan *node.Node, 1)
		go func() { done <- serveDaemon(ctx, a, fa, func(n *node.Node) { up <- n }, daemonLog(t, a)) }()
		select {
		case <-up:
		case err := <-done:
			t.Fatalf("alice: %v", err)
		}
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("alice: %v", err)
			}
		}
	}
	stopAlice := startAlice()

	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, t.TempDir()+"/runs")
	serveErr, _ := serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")
	echo := func(what string) {
		t.Helper()
		if err := simulations.WaitFor(20*time.Second, func() error {
			r := cli(t, "send", "--home", b, "--to", aID, "--action", "mcp.files:echo", "--body", `{"text":"x"}`)
			if r.code != 0 || !strings.Contains(r.stdout, `"said":"echo: x"`) {
				return fmt.Errorf("%s: %+v", what, r)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	echo("before the restart")
	stopAlice()
	stopAlice = startAlice()
	defer stopAlice()
	echo("after the restart")
	if !strings.Contains(serveErr.String(), "the daemon's stream of mcp.files:echo ended") {
		t.Fatalf("mcp serve did not say the stream ended: %s", serveErr.String())
	}
}

// mcp serve follows the child's tool list: a tool the server adds while it
// runs (tools/list_changed) is served and callable across the mesh, and a
// tool it removes is served no more (its calls: no_handler), without a
// restart of mcp serve.
func TestMCPServeFollowsToolChanges(t *testing.T) {
	m := newTestMesh(t)
	b, _, fb := m.agent("bob", "mcp.files:grow,mcp.files:grown,mcp.files:shrink")
	a, aID, fa := m.agent("alice", "")
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)
	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, t.TempDir()+"/runs")
	_, _ = serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")
	send := func(action string) result {
		return cli(t, "send", "--home", b, "--to", aID, "--action", action, "--body", `{}`)
	}
	waitSaid := func(action, said string) {
		t.Helper()
		if err := simulations.WaitFor(20*time.Second, func() error {
			if r := send(action); r.code != 0 || !strings.Contains(r.stdout, `"said":"`+said+`"`) {
				return fmt.Errorf("%s: %+v", action, r)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if r := send("mcp.files:grown"); r.code == 0 || !strings.Contains(r.stderr, "no_handler") {
		t.Fatalf("grown before the server has it: %+v", r)
	}
	waitSaid("mcp.files:grow", "grew")
	waitSaid("mcp.files:grown", "grown") // served without a restart of mcp serve
	waitSaid("mcp.files:shrink", "shrank")
	if err := simulations.WaitFor(20*time.Second, func() error {
		if r := send("mcp.files:grown"); r.code == 0 || !strings.Contains(r.stderr, "no_handler") {
			return fmt.Errorf("grown after shrink: %+v", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
