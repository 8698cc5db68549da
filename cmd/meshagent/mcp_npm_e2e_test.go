//go:build meshsim

package main

// The MCP bridge against MCP parts nobody here wrote: the MCP project's
// reference servers from npm behind `meshagent mcp serve`, and a client on
// the official TypeScript SDK talking to `meshagent mcp`. The packages are
// pinned in test/mcp-e2e/package-lock.json; `make test` installs them
// (npm ci) into test/mcp-e2e/node_modules.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// npmE2EDir is the npm folder of the test, from this package's directory.
const npmE2EDir = "../../test/mcp-e2e"

// npmToolResult is a tool result as the JS client summarises it.
type npmToolResult struct {
	IsError    bool            `json:"isError"`
	Text       string          `json:"text"`
	Structured json.RawMessage `json:"structured"`
}

// reply decodes the signed reply of a successful call to an `mcp serve`
// tool: who sent it, its correlation ID, and the text of the tool's result.
func (r npmToolResult) reply(t *testing.T, what string) (from, corr, text string) {
	t.Helper()
	if r.IsError {
		t.Fatalf("%s: error result: %s", what, r.Text)
	}
	var rep struct {
		From          string `json:"from"`
		CorrelationID string `json:"correlation_id"`
		Body          struct {
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
		} `json:"body"`
	}
	if err := json.Unmarshal(r.Structured, &rep); err != nil {
		t.Fatalf("%s: reply %s: %v", what, r.Structured, err)
	}
	for _, c := range rep.Body.Content {
		if c.Type == "text" {
			text += c.Text
		}
	}
	return rep.From, rep.CorrelationID, text
}

// npmSummary is what test/mcp-e2e/client.mjs prints.
type npmSummary struct {
	OK     bool           `json:"ok"`
	MS     map[string]int `json:"ms"` // when each step ended, from the start
	Error  string         `json:"error"`
	Server struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"server"`
	Tools []struct {
		Name        string         `json:"name"`
		Title       string         `json:"title"`
		Description string         `json:"description"`
		InputSchema map[string]any `json:"inputSchema"`
	} `json:"tools"`
	Echo, Sum, Read, Refused npmToolResult
	Long, LongTool           npmLongResult
}

// npmLongResult is a long call's result and the progress notifications
// the JS client got for it.
type npmLongResult struct {
	npmToolResult
	Progress []struct {
		Progress float64 `json:"progress"`
		Total    float64 `json:"total"`
	} `json:"progress"`
}

// TestMCPNpmEndToEnd: alice's daemon serves the MCP project's
// server-everything and server-filesystem (from npm) behind `meshagent mcp
// serve`; bob holds a token for some of their tools, and a client on the
// official TypeScript SDK launches the meshagent binary's `mcp` over stdio
// on bob's side. It sees alice's advertised tools (those granted only),
// calls them across the mesh, is refused one it holds no token for, and
// gets the progress of a long call.
func TestMCPNpmEndToEnd(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: this test runs the MCP project's npm packages (Node 20 or newer)")
	}
	dir, err := filepath.Abs(npmE2EDir)
	if err != nil {
		t.Fatal(err)
	}
	mods := filepath.Join(dir, "node_modules", "@modelcontextprotocol")
	everything := filepath.Join(mods, "server-everything", "dist", "index.js")
	filesystem := filepath.Join(mods, "server-filesystem", "dist", "index.js")
	for _, f := range []string{everything, filesystem, filepath.Join(mods, "sdk", "package.json")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s is missing: `make test` installs it (or: cd test/mcp-e2e && npm ci)", f)
		}
	}

	// The binary, as `make build` makes it: without the simulation hooks.
	bin := filepath.Join(t.TempDir(), "meshagent")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	const (
		echo = "mcp.everything:echo"
		sum  = "mcp.everything:get-sum"
		long = "mcp.everything:trigger-long-running-operation"
		read = "mcp.files:read_text_file"
		env  = "mcp.everything:get-env" // served, advertised, not granted
	)
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "")
	b, bID, fb := m.agent("bob", strings.Join([]string{echo, sum, long, read}, ","))
	// mcp serve advertises some 30 tools one after the other: a record's
	// changes go out at most every two heartbeats after a burst
	// (node.Advertise), 60 s at the default heartbeat.
	for _, fc := range []*fileConfig{fa, fb} {
		fc.Heartbeat, fc.DeadAfter = time.Second, 10*time.Second
	}
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)

	root := t.TempDir()
	known := filepath.Join(root, "notes.md")
	const content = "signed both ways\n"
	if err := os.WriteFile(known, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	serveCLI(t, "mcp", "serve", "--home", a, "--name", "everything", "--", node, everything, "stdio")
	serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", node, filesystem, root)

	// Bob's MCP client. The per-action tools are named AGENT__VERB__RESOURCE
	// (docs/mcp.md).
	tool := func(scope string) string { return "alice__" + strings.ReplaceAll(scope, ":", "__") }
	cfg, _ := json.Marshal(map[string]any{
		"meshagent": bin,
		"args":      []string{"mcp", "--home", b, "--refresh", "200ms"},
		"want":      []string{tool(echo), tool(sum), tool(long), tool(read)},
		"echo":      tool(echo), "sum": tool(sum), "read": tool(read), "long": tool(long), "path": known,
		"longCall": map[string]string{"to": "alice", "action": long},
		"refused":  map[string]string{"to": "alice", "action": env},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := exec.CommandContext(ctx, node, filepath.Join(dir, "client.mjs"), string(cfg))
	js.Dir = dir
	var stdout bytes.Buffer
	stderr := new(syncBuffer)
	js.Stdout, js.Stderr = &stdout, stderr
	start := time.Now()
	runErr := js.Run()
	t.Logf("the JS client ran %s", time.Since(start).Round(time.Millisecond))
	var s npmSummary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil || !s.OK || runErr != nil {
		t.Fatalf("the JS client: %v, %v: %s\nits stdout: %s\nits stderr (and meshagent mcp's):\n%s", runErr, err, s.Error, stdout.String(), stderr.String())
	}
	t.Logf("the JS client's steps ended at (ms): %v", s.MS)
	if s.Server.Name == "" {
		t.Fatalf("no server info from meshagent mcp: %+v", s.Server)
	}

	// The tools: mesh_peers, mesh_call and the granted actions, named and
	// described from alice's advertisements; nothing bob may not call.
	names := map[string]int{}
	for i, tl := range s.Tools {
		names[tl.Name] = i
	}
	for _, want := range []string{"mesh_peers", "mesh_call", tool(echo), tool(sum), tool(long), tool(read)} {
		if _, ok := names[want]; !ok {
			t.Fatalf("no tool %s among %v", want, names)
		}
	}
	for n := range names {
		if strings.HasPrefix(n, "alice__") && n != tool(echo) && n != tool(sum) && n != tool(long) && n != tool(read) {
			t.Fatalf("tool %s is offered, but bob holds no token for it", n)
		}
	}
	et := s.Tools[names[tool(echo)]]
	props, _ := et.InputSchema["properties"].(map[string]any)
	if et.Title != "echo" || !strings.HasPrefix(et.Description, "Echoes back the input string") ||
		!strings.Contains(et.Description, aID) || props["message"] == nil {
		t.Fatalf("the echo tool is not described from server-everything's advertisement: %+v", et)
	}
	if rt := s.Tools[names[tool(read)]]; rt.Title != "read_text_file" || rt.InputSchema["properties"].(map[string]any)["path"] == nil {
		t.Fatalf("the read_text_file tool: %+v", rt)
	}

	// Calls across the mesh, answered by alice, audited on both sides.
	from, corr, text := s.Echo.reply(t, "echo")
	if from != aID || text != "Echo: hello across the mesh" {
		t.Fatalf("echo: from %s: %q", from, text)
	}
	for _, home := range []string{a, b} {
		if audit, _ := os.ReadFile(filepath.Join(home, "audit.log")); !strings.Contains(string(audit), corr) {
			t.Fatalf("%s's audit log has no line of the echo call %s:\n%s", home, corr, audit)
		}
	}
	if _, _, text := s.Sum.reply(t, "get-sum"); text != "The sum of 19 and 23 is 42." {
		t.Fatalf("get-sum: %q", text)
	}
	if from, _, text := s.Read.reply(t, "read_text_file"); from != aID || text != content {
		t.Fatalf("read_text_file: from %s: %q, want %q", from, text, content)
	}

	// Refused by bob's daemon: an error result with the mesh's reason code.
	var refused struct{ Code, Error string }
	_ = json.Unmarshal(s.Refused.Structured, &refused)
	if !s.Refused.IsError || refused.Code != "no_token" || !strings.Contains(s.Refused.Text, "no_token") {
		t.Fatalf("a call to %s without a token: %+v", env, s.Refused)
	}

	// Two long calls at once, with progress tokens: server-everything's
	// progress crosses the mesh as signed progress envelopes and reaches
	// the TS client as notifications/progress of each call's token. (The
	// last ones may race the result: docs/mcp.md, long calls.)
	for _, c := range []struct {
		what string
		r    npmLongResult
	}{{"a long mesh_call", s.Long}, {"a long call of the per-action tool", s.LongTool}} {
		if _, _, text := c.r.reply(t, c.what); text != "Long running operation completed. Duration: 3 seconds, Steps: 6." {
			t.Fatalf("%s: %q", c.what, text)
		}
		for i, p := range c.r.Progress {
			if p.Total != 6 || (i > 0 && p.Progress <= c.r.Progress[i-1].Progress) {
				t.Fatalf("%s: progress %+v", c.what, c.r.Progress)
			}
		}
	}
	if len(s.Long.Progress) < 3 {
		t.Fatalf("a long mesh_call: %d progress notifications of 6, want at least 3: %+v", len(s.Long.Progress), s.Long.Progress)
	}
	if len(s.LongTool.Progress) < 3 {
		t.Fatalf("a long call of the per-action tool: %d progress notifications of 6, want at least 3: %+v", len(s.LongTool.Progress), s.LongTool.Progress)
	}
	t.Logf("%d tools offered to bob (%s)", len(s.Tools), bID)
}
