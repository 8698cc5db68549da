//go:build meshsim

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/simulations"
)

// The latency benchmarks of this file run only when asked, with the
// number of calls per side in MESHAGENT_BENCH_CALLS:
//
//	MESHAGENT_BENCH_CALLS=2000 go test -tags meshsim -count=1 -v \
//	  -run '^TestBench(MCPThroughMesh|SendTracing)$' ./cmd/meshagent/
func benchCalls(t *testing.T) int {
	n, _ := strconv.Atoi(os.Getenv("MESHAGENT_BENCH_CALLS"))
	if n <= 0 {
		t.Skip("a benchmark: set MESHAGENT_BENCH_CALLS to run it")
	}
	return n
}

// percentiles returns the p50 and p99 of d (sorted in place).
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(d)
	return d[len(d)*50/100], d[min(len(d)*99/100, len(d)-1)]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// TestBenchMCPThroughMesh: one SDK client calls the helper server's echo
// tool directly over stdio, and the same tool through the mesh (SDK
// client → meshagent mcp → daemon B → libp2p → daemon A → mcp serve →
// the helper over stdio), alternating, in the same run.
func TestBenchMCPThroughMesh(t *testing.T) {
	calls := benchCalls(t)
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "")
	b, _, fb := m.agent("bob", "mcp.files:echo")
	m.start(b, fb, m.start(a, fa))
	admitted(t, b, aID, 20*time.Second)
	t.Setenv(mcpHelperEnv, "server")
	t.Setenv(mcpHelperCount, os.DevNull)
	serveCLI(t, "mcp", "serve", "--home", a, "--name", "files", "--", os.Args[0], "-test.run=^TestMCPHelperProcess$")

	connect := func(cmd string) *mcp.ClientSession {
		client := mcp.NewClient(&mcp.Implementation{Name: "bench-client", Version: "1"}, nil)
		var c = helperCommand(cmd)
		if cmd == "cli" {
			c = helperCommand("cli", mcpHelperArgs+`=["mcp","--home",`+jsonString(b)+`]`)
		}
		c.Stderr = io.Discard
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := client.Connect(ctx, &mcp.CommandTransport{Command: c}, nil)
		if err != nil {
			t.Fatalf("connect %s: %v", cmd, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	direct, mesh := connect("server"), connect("cli")
	callDirect := func() error {
		r, err := direct.CallTool(context.Background(), &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "hi"}})
		if err == nil && r.IsError {
			err = fmt.Errorf("echo: error result")
		}
		return err
	}
	callMesh := func() error {
		r, err := mesh.CallTool(context.Background(), &mcp.CallToolParams{Name: "mesh_call",
			Arguments: map[string]any{"to": "alice", "action": "mcp.files:echo", "body": `{"text":"hi"}`}})
		if err == nil && r.IsError {
			err = fmt.Errorf("mesh echo: error result %v", r.Content)
		}
		return err
	}
	// Wait until mcp serve has registered the action.
	if err := simulations.WaitFor(15*time.Second, callMesh); err != nil {
		t.Fatal(err)
	}
	for range 50 { // warm up both
		_, _ = callDirect(), callMesh()
	}
	dd, md := make([]time.Duration, 0, calls), make([]time.Duration, 0, calls)
	for range calls {
		s := time.Now()
		if err := callDirect(); err != nil {
			t.Fatal(err)
		}
		dd = append(dd, time.Since(s))
		s = time.Now()
		if err := callMesh(); err != nil {
			t.Fatal(err)
		}
		md = append(md, time.Since(s))
	}
	d50, d99 := percentiles(dd)
	m50, m99 := percentiles(md)
	t.Logf("MCP tool call, %d calls each: direct stdio p50 %.0f µs p99 %.0f µs; through the mesh p50 %.0f µs p99 %.0f µs",
		calls, us(d50), us(d99), us(m50), us(m99))
	t.Logf("ratio mesh/direct: p50 %.2f p99 %.2f; added latency: p50 %.0f µs p99 %.0f µs",
		float64(m50)/float64(d50), float64(m99)/float64(d99), us(m50-d50), us(m99-d99))
}

// TestBenchSendTracing: /v1/send of ping:agent between two daemons, one
// pair without otlp_endpoint and one exporting every span to an in-test
// OTLP/HTTP receiver, alternating, in the same run.
func TestBenchSendTracing(t *testing.T) {
	calls := benchCalls(t)
	rcv := newOTLPReceiver(t)
	_, a0, _, _, b0 := twoDaemons(t, "ping:agent", "", nil)
	_, a1, _, _, b1 := twoDaemons(t, "ping:agent", "", func(_ string, fc *fileConfig) { fc.OTLPEndpoint = rcv.URL })
	admitted(t, a0, b0, 15*time.Second)
	admitted(t, a1, b1, 15*time.Second)
	send := func(home, to string) func() error {
		c, err := newLocalClient(home)
		if err != nil {
			t.Fatal(err)
		}
		req := map[string]any{"to": to, "action": "ping:agent"}
		return func() error { return c.call(context.Background(), "POST", "/v1/send", req, io.Discard) }
	}
	off, on := send(a0, b0), send(a1, b1)
	for range 50 {
		_, _ = off(), on()
	}
	od, nd := make([]time.Duration, 0, calls), make([]time.Duration, 0, calls)
	for range calls {
		s := time.Now()
		if err := off(); err != nil {
			t.Fatal(err)
		}
		od = append(od, time.Since(s))
		s = time.Now()
		if err := on(); err != nil {
			t.Fatal(err)
		}
		nd = append(nd, time.Since(s))
	}
	o50, o99 := percentiles(od)
	n50, n99 := percentiles(nd)
	t.Logf("/v1/send ping, %d calls each: tracing off p50 %.0f µs p99 %.0f µs; on p50 %.0f µs p99 %.0f µs; on/off p50 %.2f p99 %.2f",
		calls, us(o50), us(o99), us(n50), us(n99), float64(n50)/float64(o50), float64(n99)/float64(o99))
}
