package main

// `meshagent mcp`: the mesh as an MCP server for one local agent (issue 14
// section 2). It is a client of the daemon's local API, like the other
// client commands: it holds no key, and every call it makes is signed,
// checked and audited by the daemon. See docs/mcp.md.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/trust"
)

// mcpImplementation names meshagent to MCP peers.
var mcpImplementation = &mcp.Implementation{Name: "meshagent", Version: "0.1"}

// defaultMCPRefresh is how often `meshagent mcp` polls GET /v1/peers to
// follow agents joining and leaving (the local API has no event stream of
// the registry).
const defaultMCPRefresh = 2 * time.Second

// mcpMaxListedPeers bounds the agents that mesh_call's description names:
// past that many, it says how many more there are (mesh_peers lists all).
const mcpMaxListedPeers = 32

func newMCPCmd() *cobra.Command {
	var httpAddr string
	var refresh time.Duration
	cmd := clientCommand(&cobra.Command{
		// Flags are checked before the daemon's config is read.
		PreRunE: func(*cobra.Command, []string) error {
			if refresh <= 0 {
				return usagef("--refresh must be positive")
			}
			if httpAddr != "" {
				if err := checkLoopback(httpAddr); err != nil {
					return usagef("--http: %v", err)
				}
			}
			return nil
		},
		Use:   "mcp --home DIR [--http 127.0.0.1:PORT]",
		Short: "Serve the mesh to an MCP client (tools mesh_peers and mesh_call), over stdio or loopback HTTP",
		Long: `Serve the mesh to one local agent as an MCP server, over stdio (what an MCP
client launches) or, with --http, streamable HTTP on a loopback address. It is
a client of the daemon's local API at --home: it holds no key, and the daemon
signs, checks and audits every call. See docs/mcp.md.`,
		Args: exactArgs(0),
	}, func(cmd *cobra.Command, _ []string, c *localClient) error {
		var ln net.Listener
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		stderr := &lockedWriter{w: cmd.ErrOrStderr()} // written by follow too
		ms, err := newMeshMCP(ctx, c, stderr)
		if err != nil {
			return err
		}
		if httpAddr != "" {
			if ln, err = net.Listen("tcp", httpAddr); err != nil {
				return fmt.Errorf("--http: %v", err)
			}
		}
		ctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		wg.Add(1)
		go func() { defer wg.Done(); ms.follow(ctx, refresh) }()
		if ln == nil {
			fmt.Fprintf(stderr, "meshagent: mcp: serving the mesh of %s (%s) over stdio\n", ms.self.Name, ms.self.PeerID)
			// Stdout is the MCP stream: nothing else may be written there.
			err := ms.srv.Run(ctx, &mcp.StdioTransport{})
			if ctx.Err() != nil || errors.Is(err, mcp.ErrConnectionClosed) || errors.Is(err, io.EOF) {
				return nil // the client went away, or we were stopped
			}
			return err
		}
		h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return ms.srv }, nil)
		mux := http.NewServeMux()
		mux.Handle("/mcp", h)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: apiHeaderTimeout}
		context.AfterFunc(ctx, func() { srv.Close() })
		fmt.Fprintf(stderr, "meshagent: mcp: serving MCP on http://%s/mcp\n", ln.Addr())
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	cmd.Flags().StringVar(&httpAddr, "http", "", "serve streamable HTTP on this loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT) instead of stdio")
	cmd.Flags().DurationVar(&refresh, "refresh", defaultMCPRefresh, "how often to poll the daemon's peers to refresh the tool list")
	cmd.AddCommand(newMCPServeCmd())
	return cmd
}

// checkLoopback refuses an address to listen on that is not on a loopback
// interface: the MCP endpoint has no authentication of its own, so it must
// be reachable from this host only.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address: the MCP endpoint has no authentication of its own, use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT", addr)
	}
	return nil
}

// meshPeer is one agent of the daemon's registry, as GET /v1/peers lists
// it.
type meshPeer struct {
	PeerID string `json:"peer_id"`
	Name   string `json:"name"`
	State  string `json:"state"`
	// Actions are the scopes it advertises; AdvertDigest keys its
	// advertisement (mcp_actions.go).
	Actions      []string `json:"actions,omitempty"`
	AdvertDigest string   `json:"advert_digest,omitempty"`
}

// meshView is what the daemon says of the mesh at one time: the tools
// offered are a function of it.
type meshView struct {
	Self  meshPeer
	Peers []meshPeer // every listed agent but this one, dead ones included
	// Granted are the scopes this agent holds a token for; Adverts the
	// advertisements of alive agents that serve one of them, by peer ID.
	Granted map[string]bool
	Adverts map[string]*actionsView
}

// alive returns the agents of v that are alive.
func (v meshView) alive() []meshPeer {
	var out []meshPeer
	for _, p := range v.Peers {
		if p.State == "alive" {
			out = append(out, p)
		}
	}
	return out
}

// meshTool is one tool offered to the MCP client.
type meshTool struct {
	tool    *mcp.Tool
	handler mcp.ToolHandler
}

// toolSource gives the tools to offer for a view of the mesh. The server
// offers the union of its sources' tools, and adds, replaces and removes
// tools as the view changes (the SDK then sends
// notifications/tools/list_changed).
//
// The sources: builtinTools (mesh_peers, mesh_call) and actionTools
// (mcp_actions.go: one tool per action of an alive agent that this agent
// holds a token for, named and described from its signed advertisement).
type toolSource func(v meshView) []meshTool

// meshMCP is the MCP server of `meshagent mcp`.
type meshMCP struct {
	c       *localClient
	self    meshPeer // this agent, from GET /v1/status at start
	srv     *mcp.Server
	sources []toolSource
	stderr  io.Writer

	mu      sync.Mutex
	offered map[string][]byte       // tool name -> its definition as JSON, as last added
	down    bool                    // the last poll failed (said once on stderr)
	adverts map[string]*actionsView // fetched advertisements, by digest
}

// newMeshMCP makes the server of the daemon that c talks to, with the
// tools of the mesh as the daemon sees it now. A daemon that does not
// answer is an error.
func newMeshMCP(ctx context.Context, c *localClient, stderr io.Writer) (*meshMCP, error) {
	ms := &meshMCP{
		c: c, stderr: stderr, offered: map[string][]byte{},
		srv: mcp.NewServer(mcpImplementation, &mcp.ServerOptions{
			Instructions: "Tools of the meshagent mesh: every call is a signed envelope with this agent's capability token, checked and audited by both daemons.",
			Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{ListChanged: true}},
		}),
	}
	ms.sources = []toolSource{ms.builtinTools, actionTools(ms)}
	ms.adverts = map[string]*actionsView{}
	var st bytes.Buffer
	if err := c.call(ctx, "GET", "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(st.Bytes(), &ms.self); err != nil {
		return nil, fmt.Errorf("local API: /v1/status: %v", err)
	}
	v, err := ms.view(ctx)
	if err != nil {
		return nil, err
	}
	ms.apply(v)
	return ms, nil
}

// view asks the daemon which agents it lists.
func (ms *meshMCP) view(ctx context.Context) (meshView, error) {
	v := meshView{Self: ms.self}
	var peers bytes.Buffer
	if err := ms.c.call(ctx, "GET", "/v1/peers", nil, &peers); err != nil {
		return v, err
	}
	var all []meshPeer
	if err := json.Unmarshal(peers.Bytes(), &all); err != nil {
		return v, fmt.Errorf("local API: /v1/peers: %v", err)
	}
	for _, p := range all {
		if p.PeerID != v.Self.PeerID {
			v.Peers = append(v.Peers, p)
		}
	}
	return v, ms.actionsView(ctx, &v)
}

// apply offers the tools of v: tools whose definition changed are added
// again, tools no source gives any more are removed.
func (ms *meshMCP) apply(v meshView) {
	want := map[string]meshTool{}
	for _, src := range ms.sources {
		for _, t := range src(v) {
			want[t.tool.Name] = t
		}
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var gone []string
	for name := range ms.offered {
		if _, ok := want[name]; !ok {
			gone = append(gone, name)
			delete(ms.offered, name)
		}
	}
	if len(gone) > 0 {
		ms.srv.RemoveTools(gone...)
	}
	for name, t := range want {
		def, err := json.Marshal(t.tool)
		if err != nil || bytes.Equal(def, ms.offered[name]) {
			continue
		}
		ms.offered[name] = def
		ms.srv.AddTool(t.tool, t.handler)
	}
}

// follow polls the daemon every interval until ctx ends and applies what
// it sees. A daemon that stops answering is said once on stderr; the
// tools stay as they were until it answers again.
func (ms *meshMCP) follow(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v, err := ms.view(ctx)
		if ctx.Err() != nil {
			return
		}
		ms.mu.Lock()
		wasDown := ms.down
		ms.down = err != nil
		ms.mu.Unlock()
		switch {
		case err != nil && !wasDown:
			fmt.Fprintf(ms.stderr, "meshagent: mcp: the daemon does not answer (the tool list stays as it was): %v\n", oneLine(err))
		case err == nil && wasDown:
			fmt.Fprintln(ms.stderr, "meshagent: mcp: the daemon answers again")
		}
		if err == nil {
			ms.apply(v)
		}
	}
}

func oneLine(err error) string { return flatten(err.Error()) }

// flatten makes s one line: its line breaks, and the spaces around them,
// become one space.
func flatten(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, " ")
}

// builtinTools are mesh_peers and mesh_call. mesh_call's description names
// the alive agents, so the tool list changes when one joins or leaves.
func (ms *meshMCP) builtinTools(v meshView) []meshTool {
	empty := map[string]any{"type": "object", "properties": map[string]any{}}
	peers := &mcp.Tool{
		Name:        "mesh_peers",
		Title:       "Agents on the mesh",
		Description: "List the agents this agent's daemon knows on the meshagent mesh: peer ID, name and liveness (alive, suspect, dead). Only alive agents can be called.",
		InputSchema: empty,
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true},
	}
	alive := v.alive()
	var names []string
	for i, p := range alive {
		if i == mcpMaxListedPeers {
			names = append(names, fmt.Sprintf("and %d more (see mesh_peers)", len(alive)-i))
			break
		}
		names = append(names, fmt.Sprintf("%s (%s)", p.Name, p.PeerID))
	}
	agents := "No other agent is alive now."
	if len(names) > 0 {
		agents = "Alive now: " + strings.Join(names, ", ") + "."
	}
	call := &mcp.Tool{
		Name:  "mesh_call",
		Title: "Call an agent on the mesh",
		Description: "Call an action on another agent of the meshagent mesh and return its signed reply. " +
			"The call is a signed envelope carrying this agent's capability token for the action; the callee's daemon checks it and audits it. " +
			"A call the mesh refuses (no token, scope not granted, dead agent, timeout...) returns an error result with its reason code. " + agents,
		InputSchema: map[string]any{
			"type": "object",
			"properties": map[string]any{
				"to":      map[string]any{"type": "string", "description": "the agent to call: its peer ID (12D3KooW...) or its name. " + agents},
				"action":  map[string]any{"type": "string", "description": "the action, a scope verb:resource (lowercase), for example read:logs"},
				"body":    map[string]any{"type": "string", "description": "the request body as JSON text (default {}); text that is not JSON is sent as a JSON string"},
				"timeout": map[string]any{"type": "string", "description": "how long to wait for the reply, a Go duration such as 30s, at most 1h (default: the daemon's for the action, 10s unless configured)"},
			},
			"required":             []string{"to", "action"},
			"additionalProperties": false,
		},
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(true)},
	}
	return []meshTool{{peers, ms.meshPeers}, {call, ms.meshCall}}
}

func ptr[T any](v T) *T { return &v }

// toolResult is a successful result: v as JSON text, and as structured
// content.
func toolResult(v any) *mcp.CallToolResult {
	b, _ := json.Marshal(v)
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}, StructuredContent: json.RawMessage(b)}
}

// toolError is an error result: the line the CLI would print, and the
// code and message as structured content.
func toolError(e apiError) *mcp.CallToolResult {
	e.Error = flatten(e.Error)
	b, _ := json.Marshal(e)
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: e.err().Error()}}, StructuredContent: json.RawMessage(b)}
}

// Codes of errors that `meshagent mcp` finds itself, before the mesh is
// asked: they are not reason codes of the mesh.
const (
	mcpCodeBadInput     = "bad_input"     // the tool's arguments are not usable
	mcpCodeUnknownAgent = "unknown_agent" // no listed agent has that name
	mcpCodeAmbiguous    = "ambiguous_name"
	mcpCodeLocalAPI     = "local_api" // the daemon did not answer
)

func (ms *meshMCP) meshPeers(ctx context.Context, _ *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	v, err := ms.view(ctx)
	if err != nil {
		return toolError(apiError{Code: mcpCodeLocalAPI, Error: oneLine(err)}), nil
	}
	peers := v.Peers
	if peers == nil {
		peers = []meshPeer{}
	}
	return toolResult(map[string]any{"self": v.Self, "peers": peers}), nil
}

// mcpCallArgs are the arguments of mesh_call.
type mcpCallArgs struct {
	To      string `json:"to"`
	Action  string `json:"action"`
	Body    string `json:"body"`
	Timeout string `json:"timeout"`
}

func (ms *meshMCP) meshCall(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	var a mcpCallArgs
	d := json.NewDecoder(bytes.NewReader(req.Params.Arguments))
	d.DisallowUnknownFields()
	if err := d.Decode(&a); err != nil {
		return toolError(apiError{Code: mcpCodeBadInput, Error: "arguments: " + err.Error()}), nil
	}
	if a.To == "" || a.Action == "" {
		return toolError(apiError{Code: mcpCodeBadInput, Error: "to and action are required"}), nil
	}
	if err := trust.ValidateScope(a.Action); err != nil {
		return toolError(apiError{Code: string(trust.CodeOf(err)), Error: "action: " + err.Error()}), nil
	}
	// No timeout: the daemon's for the action (defaultCallTimeout unless
	// its config says), at most mcpMaxTimeout.
	timeout := mcpMaxTimeout
	if a.Timeout != "" {
		t, err := time.ParseDuration(a.Timeout)
		if err == nil {
			err = checkTimeout(t)
		}
		if err != nil {
			return toolError(apiError{Code: mcpCodeBadInput, Error: fmt.Sprintf("timeout %q: want a Go duration such as 30s, at most %s", a.Timeout, mcpMaxTimeout)}), nil
		}
		timeout = t
	}
	body := json.RawMessage(a.Body)
	switch {
	case strings.TrimSpace(a.Body) == "":
		body = json.RawMessage("{}")
	case !json.Valid(body):
		body, _ = json.Marshal(a.Body)
	}
	to, e := ms.resolve(ctx, a.To)
	if e != nil {
		return toolError(*e), nil
	}
	// The daemon gives up at timeout; the HTTP request waits a little
	// longer for its answer. The request ends early, and the daemon's call
	// with it, when the MCP client cancels.
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	in := map[string]any{"to": to, "action": a.Action, "body": body}
	if a.Timeout != "" {
		in["timeout"] = timeout.String()
	}
	traceFromMeta(req.Params.Meta, in)
	out, e := ms.sendCall(ctx, req, in) // mcp_longcalls.go: progress notifications

	if e != nil {
		return toolError(*e), nil
	}
	return toolResult(out), nil
}

// resolve returns the peer ID of to: a peer ID as is, else the one agent
// the daemon lists by that name (an alive one before others).
func (ms *meshMCP) resolve(ctx context.Context, to string) (string, *apiError) {
	if _, err := trust.ParsePublicKey(to); err == nil {
		return to, nil
	}
	v, err := ms.view(ctx)
	if err != nil {
		return "", &apiError{Code: mcpCodeLocalAPI, Error: oneLine(err)}
	}
	var match []meshPeer
	for _, p := range v.Peers {
		if p.Name == to {
			match = append(match, p)
		}
	}
	if alive := slices.DeleteFunc(slices.Clone(match), func(p meshPeer) bool { return p.State != "alive" }); len(alive) > 0 {
		match = alive
	}
	switch len(match) {
	case 0:
		return "", &apiError{Code: mcpCodeUnknownAgent, Error: fmt.Sprintf("no agent named %q is listed (mesh_peers lists them; give a name or a peer ID)", to)}
	case 1:
		return match[0].PeerID, nil
	}
	var ids []string
	for _, p := range match {
		ids = append(ids, p.PeerID)
	}
	return "", &apiError{Code: mcpCodeAmbiguous, Error: fmt.Sprintf("%d agents are named %q (%s): give the peer ID", len(match), to, strings.Join(ids, ", "))}
}

// send posts in to /v1/send and returns the daemon's answer, or its
// refusal with the reason code.
func (ms *meshMCP) send(ctx context.Context, in any) (json.RawMessage, *apiError) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, &apiError{Code: mcpCodeBadInput, Error: err.Error()}
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://meshagent/v1/send", bytes.NewReader(data))
	if err != nil {
		return nil, &apiError{Code: mcpCodeBadInput, Error: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ms.c.http.Do(req)
	if err != nil {
		return nil, &apiError{Code: mcpCodeLocalAPI, Error: "local API (is 'meshagent run' running?): " + oneLine(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		e := readAPIError(resp)
		return nil, &e
	}
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil || !json.Valid(out) {
		return nil, &apiError{Code: mcpCodeLocalAPI, Error: fmt.Sprintf("local API: reading the answer: %v", err)}
	}
	return out, nil
}
