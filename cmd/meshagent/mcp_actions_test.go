//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/simulations"
)

// listTools returns the tools s lists, by name.
func listTools(t *testing.T, s *mcp.ClientSession) map[string]*mcp.Tool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*mcp.Tool{}
	for _, tl := range res.Tools {
		out[tl.Name] = tl
	}
	return out
}

// TestMCPPerActionTools: alice serves an MCP server's tools behind
// `meshagent mcp serve`, which advertises each with the tool's real name,
// description and input schema. Bob's `meshagent mcp` offers one tool per
// action that alice advertises and bob holds a token for (not the one he
// holds none for), named ALICE__VERB__RESOURCE; a call of it goes through
// the mesh. When mcp serve stops, the advertisement goes, and the tools go
// with a list_changed notification.
func TestMCPPerActionTools(t *testing.T) {
	m := newTestMesh(t)
	shout := "mcp.files:" + mcpResource("Shout.Loud")
	a, aID, fa := m.agent("alice", "")
	b, _, fb := m.agent("bob", "mcp.files:echo,"+shout)
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)

	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, t.TempDir()+"/runs")
	_, stopServe := serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")

	changed := make(chan struct{}, 64)
	s, _ := mcpSession(t, b, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { changed <- struct{}{} },
	}, "--refresh", "200ms")

	echo := "alice__mcp.files__echo"
	loud := "alice__" + strings.Replace(shout, ":", "__", 1)
	var tools map[string]*mcp.Tool
	if err := simulations.WaitFor(20*time.Second, func() error {
		if tools = listTools(t, s); tools[echo] == nil || tools[loud] == nil {
			return fmt.Errorf("tools: %v", slices.Collect(mapKeys(tools)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if tools["alice__mcp.files__secret"] != nil {
		t.Fatal("a tool for an action bob holds no token for")
	}
	if d := tools[echo].Description; !strings.HasPrefix(d, "test tool echo.") || !strings.Contains(d, aID) {
		t.Fatalf("echo's description: %q", d)
	}
	if tools[loud].Title != "Shout.Loud" {
		t.Fatalf("Shout.Loud's title: %q", tools[loud].Title)
	}
	schema, _ := json.Marshal(tools[echo].InputSchema)
	if !strings.Contains(string(schema), `"text"`) {
		t.Fatalf("echo's input schema: %s", schema)
	}
	if _, said := replyOf(t, "echo", callTool(t, s, echo, map[string]any{"text": "hi"})); said != "echo: hi" {
		t.Fatalf("echo said %q", said)
	}
	for len(changed) > 0 {
		<-changed
	}
	stopServe()
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("no list_changed after mcp serve stopped")
	}
	if err := simulations.WaitFor(20*time.Second, func() error {
		if tools = listTools(t, s); tools[echo] != nil || tools[loud] != nil {
			return fmt.Errorf("tools still listed: %v", slices.Collect(mapKeys(tools)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Per-action tool names: two agents of one name are told apart by their
// peer IDs, names that an MCP tool name cannot hold are mapped, and an
// advertised input schema that is not of type object is offered as any
// object (the SDK would refuse it), as is one the SDK refuses for another
// reason (an x-mcp-header on an object): AddTool panics on those.
func TestActionToolNaming(t *testing.T) {
	ms := &meshMCP{}
	ad := &actionsView{Actions: []actionAd{
		{Scope: "read:logs", Description: "Logs", InputSchema: json.RawMessage(`{"type":"array"}`)},
		{Scope: "write:x"},
		{Scope: "read:headers", InputSchema: json.RawMessage(`{"type":"object","properties":{"o":{"type":"object","x-mcp-header":"Bad Name"}}}`)},
	}}
	v := meshView{
		Peers: []meshPeer{
			{PeerID: "P1", Name: "twin", State: "alive"},
			{PeerID: "P2", Name: "twin", State: "alive"},
			{PeerID: "P3", Name: "odd name/é", State: "alive"},
			{PeerID: "P4", Name: "dead", State: "dead"},
		},
		Granted: map[string]bool{"read:logs": true, "read:headers": true},
		Adverts: map[string]*actionsView{"P1": ad, "P2": ad, "P3": ad, "P4": ad},
	}
	var names []string
	for _, tl := range actionTools(ms)(v) {
		names = append(names, tl.tool.Name)
		if s := tl.tool.InputSchema.(map[string]any); s["type"] != "object" || s["properties"] != nil {
			t.Fatalf("%s: schema %v", tl.tool.Name, s)
		}
		ms.srv = mcp.NewServer(mcpImplementation, nil)
		ms.srv.AddTool(tl.tool, tl.handler) // would panic on a schema the SDK refuses
	}
	var want []string
	for _, a := range []string{"twin-" + peerSuffix("P1"), "twin-" + peerSuffix("P2"), "odd-name--"} {
		want = append(want, a+"__read__logs", a+"__read__headers")
	}
	if !slices.Equal(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
}
