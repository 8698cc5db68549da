//go:build meshsim

package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/simulations"
)

// addLongTools adds the helper server's long tools: work sends two
// progress notifications and answers 100 ms later; hang waits until it is
// cancelled and then notes "hang-cancelled" in the count file.
func addLongTools(s *mcp.Server, ran func(string)) {
	type none struct{}
	mcp.AddTool(s, &mcp.Tool{Name: "work", Description: "test tool work"}, func(ctx context.Context, req *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, none, error) {
		ran("work")
		tok := req.Params.GetProgressToken()
		for i := 1; i <= 2 && tok != nil; i++ {
			_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: 2, Message: fmt.Sprintf("step %d", i)})
		}
		// The SDK hands progress notifications to mcp serve on a goroutine of
		// their own, unordered with the result: a long tool's progress comes
		// well before its result, and so does this one's (docs/mcp.md).
		time.Sleep(100 * time.Millisecond)
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "worked"}}}, none{}, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "hang", Description: "test tool hang"}, func(ctx context.Context, _ *mcp.CallToolRequest, _ none) (*mcp.CallToolResult, none, error) {
		ran("hang")
		select {
		case <-ctx.Done():
			ran("hang-cancelled")
		case <-time.After(time.Minute):
		}
		return nil, none{}, ctx.Err()
	})
}

// An MCP client on bob calls, through `meshagent mcp`, the tools of an
// MCP server behind `meshagent mcp serve` on alice: the child's progress
// notifications reach the client as progress notifications of its own
// token, across the mesh, signed; the client's cancellation reaches the
// child as notifications/cancelled.
func TestMCPProgressAndCancellation(t *testing.T) {
	// Restored by a cleanup registered before mcp serve starts: it runs
	// after mcp serve has stopped reading it.
	oldRestart := mcpRestartMin
	t.Cleanup(func() { mcpRestartMin = oldRestart })
	mcpRestartMin = 50 * time.Millisecond
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "")
	b, _, fb := m.agent("bob", "mcp.files:work,mcp.files:hang")
	fa.Timeouts = []actionTimeout{{Action: "mcp.files:hang", Handler: 15 * time.Minute}}
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)
	count := t.TempDir() + "/runs"
	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, count)
	serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")

	var mu sync.Mutex
	var progress []*mcp.ProgressNotificationParams
	s, cliErr := mcpSession(t, b, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			mu.Lock()
			progress = append(progress, r.Params)
			mu.Unlock()
		},
	})

	call := func(ctx context.Context, action string) (*mcp.CallToolResult, error) {
		p := &mcp.CallToolParams{Name: "mesh_call", Arguments: map[string]any{"to": aID, "action": action, "body": "{}", "timeout": "15m"}}
		p.SetProgressToken("tok-" + action)
		return s.CallTool(ctx, p)
	}
	if err := simulations.WaitFor(15*time.Second, func() error {
		res, err := call(context.Background(), "mcp.files:work")
		if err != nil || res.IsError {
			return fmt.Errorf("work: %v %+v", err, res)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(progress) < 2 {
			return fmt.Errorf("%d progress notifications", len(progress))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for i, p := range progress[:2] {
		if p.ProgressToken != "tok-mcp.files:work" || p.Progress != float64(i+1) || p.Total != 2 || p.Message != fmt.Sprintf("step %d", i+1) {
			t.Fatalf("progress %d: %+v", i, p)
		}
	}
	mu.Unlock()

	// The client cancels a call that hangs: the child learns it.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := call(ctx, "mcp.files:hang"); done <- err }()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if toolRuns(t, count)["hang"] == 0 {
			return fmt.Errorf("hang did not start")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	if err := simulations.WaitFor(10*time.Second, func() error {
		if toolRuns(t, count)["hang-cancelled"] != 1 {
			return fmt.Errorf("the child was not cancelled: %v", toolRuns(t, count))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cliErr.String(), "panic") {
		t.Fatal(cliErr.String())
	}
}
