//go:build meshsim

package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
	"github.com/meshagent/meshagent/wire"
)

type demoRow struct {
	scenario, want, got string
}

// runDemo starts an anchor's mesh of four agents over TCP+TLS on loopback,
// delegates read:logs from the orchestrator to a sub-agent, makes the
// allowed calls, then plays the attacks, and prints what happened.
func runDemo(ctx context.Context, w io.Writer) error {
	fmt.Fprintln(w, "starting a mesh on 127.0.0.1: orchestrator, sub-agent-1, sub-agent-2, log-service (TLS 1.3 over TCP)")
	m, err := simulations.NewMesh(ctx, []string{"orchestrator", "sub-agent-1", "sub-agent-2", "log-service"}, simulations.Options{})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.ConnectAll(ctx); err != nil {
		return err
	}
	logs := m.Agents["log-service"]
	var runCount atomic.Int32
	runs := func() int32 { return runCount.Load() }
	_ = logs.Node.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		runCount.Add(1)
		return []byte(`{"lines":["job 42 done"]}`), nil
	})
	_ = logs.Node.Handle("write:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		runCount.Add(1)
		return []byte(`{"ok":true}`), nil
	})
	orch, sub1, sub2 := m.Agents["orchestrator"], m.Agents["sub-agent-1"], m.Agents["sub-agent-2"]
	root, err := m.Grant("orchestrator", []string{"read:logs", "write:logs"}, []string{"read:logs"}, time.Hour)
	if err != nil {
		return err
	}
	now := time.Now()
	delegated, err := root.Delegate(orch.Identity, sub1.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now)
	if err != nil {
		return err
	}
	sub1.Node.AddToken(delegated)
	fmt.Fprintf(w, "orchestrator delegated read:logs to sub-agent-1 (chain of %d links, %d bytes)\n\n", len(delegated.Links), len(delegated.Bytes()))

	to := logs.ID()
	outcome := func(err error) string {
		if err == nil {
			return "accepted"
		}
		if c := trust.CodeOf(err); c != "" {
			return "rejected: " + string(c)
		}
		return "error: " + err.Error()
	}
	callAs := func(a *simulations.Agent, act string, opts *node.CallOptions) string {
		_, err := a.Node.Call(ctx, to, act, []byte(`{}`), opts)
		return outcome(err)
	}
	var rows []demoRow
	add := func(s, want, got string) { rows = append(rows, demoRow{s, want, got}) }
	guard := func(s, want string, f func() string) {
		before := runs()
		got := f()
		if strings.HasPrefix(want, "rejected") && runs() != before {
			got += " (HANDLER RAN)"
		}
		add(s, want, got)
	}

	guard("orchestrator reads logs with its root token", "accepted", func() string { return callAs(orch, "read:logs", nil) })
	guard("sub-agent-1 reads logs with the delegated token", "accepted", func() string { return callAs(sub1, "read:logs", nil) })

	// An MCP tool across the mesh. Real: an MCP server built with the
	// official Go SDK (in-process, in-memory transport) whose tool is
	// served as the mesh action mcp.tools:echo on the log service, as
	// `meshagent mcp serve` serves a child's tools; a signed call with a
	// token and the decision function on both sides. The caller makes the
	// node call that `meshagent mcp`'s mesh_call makes and reads the reply
	// as an MCP CallToolResult; the CLI bridges themselves are the
	// daemon's (tested in cmd/meshagent).
	if err := serveMCPTool(ctx, logs.Node, func() { runCount.Add(1) }); err != nil {
		return err
	}
	fmt.Fprintln(w, "log-service serves the tool echo of an MCP server (official Go SDK, in-process) as the action mcp.tools:echo;")
	fmt.Fprintln(w, "the MCP rows are signed node calls carrying the tool's arguments, as meshagent mcp's mesh_call makes them")
	fmt.Fprintln(w)
	if _, err := m.Grant("orchestrator", []string{mcpEchoAction}, nil, time.Hour); err != nil {
		return err
	}
	guard("MCP tool echo (go-sdk server on log-service) called across the mesh", "accepted: echo: hi", func() string {
		return callMCPTool(ctx, orch.Node, to)
	})
	guard("the same MCP tool call without a token (sub-agent-2)", "rejected: no_token", func() string {
		return callMCPTool(ctx, sub2.Node, to)
	})

	guard("forged signature: body altered in flight", "rejected: bad_signature", func() string {
		raw, _ := orch.Node.SealRequest(to, "read:logs", []byte(`{"n":"aaaa"}`), nil)
		i := strings.Index(string(raw), "aaaa")
		raw[i] = 'b'
		_, err := orch.Node.SendRaw(ctx, to, raw)
		return outcome(err)
	})
	captured, _ := sub1.Node.SealRequest(to, "read:logs", nil, nil)
	guard("a request sent once (captured on the way)", "accepted", func() string {
		_, err := sub1.Node.SendRaw(ctx, to, captured)
		return outcome(err)
	})
	guard("replay: the captured request sent again", "rejected: replay", func() string {
		_, err := sub1.Node.SendRaw(ctx, to, captured)
		return outcome(err)
	})
	guard("replay by another agent (sub-agent-2 re-sends it)", "rejected: impersonation", func() string {
		raw, _ := sub1.Node.SealRequest(to, "read:logs", nil, nil)
		_, err := sub2.Node.SendRaw(ctx, to, raw)
		return outcome(err)
	})
	guard("escalated delegation: sub-agent-1 grants itself write:logs", "rejected: escalation", func() string {
		forged := trusttest.ForgeDelegation(delegated, sub1.Identity, sub1.Identity.Public(), trust.Grant{Scopes: []string{"write:logs"}, Expires: now.Add(10 * time.Minute)}, now)
		return callAs(sub1, "write:logs", &node.CallOptions{Token: forged})
	})
	guard("delegation refused at creation (write:logs not delegatable)", "rejected: escalation", func() string {
		_, err := root.Delegate(orch.Identity, sub1.Identity.Public(), trust.Grant{Scopes: []string{"write:logs"}, Expires: now.Add(10 * time.Minute)}, now)
		return outcome(err)
	})
	guard("wrong holder: sub-agent-2 uses sub-agent-1's token", "rejected: not_holder", func() string {
		return callAs(sub2, "read:logs", &node.CallOptions{Token: delegated})
	})
	guard("scope not granted: sub-agent-1 calls write:logs", "rejected: scope_not_granted", func() string {
		return callAs(sub1, "write:logs", &node.CallOptions{Token: delegated})
	})
	guard("wildcard scope in a token", "rejected: wildcard", func() string {
		_, err := trust.IssueToken(m.Anchor, sub2.Identity.Public(), trust.Grant{Scopes: []string{"read:*"}, Expires: now.Add(time.Hour)}, now)
		return outcome(err)
	})
	guard("unlisted agent (credential from another anchor) connects", "rejected: untrusted_root", func() string {
		out, err := m.Add(ctx, "outsider", false, simulations.Options{})
		if err != nil {
			return "error: " + err.Error()
		}
		if out.Node.Join(ctx, peer.AddrInfo{ID: to, Addrs: logs.Node.Host().Addrs()}) == nil {
			return "accepted"
		}
		// The outsider learns nothing but a reset; the reason is in the
		// log-service's audit log.
		for _, a := range m.Audit() {
			if a.Kind == "admission" && a.Sender == out.ID().String() && a.Recipient == to.String() && a.Decision == "reject" {
				return "rejected: " + a.Reason
			}
		}
		return "rejected without an audit record"
	})
	guard("Noise-only peer dials", "rejected: no connection", func() string {
		priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		h, err := libp2p.New(libp2p.Identity(priv), libp2p.Security(noise.ID, noise.New), libp2p.Transport(tcp.NewTCPTransport),
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
		if err != nil {
			return "error: " + err.Error()
		}
		defer h.Close()
		if err := h.Connect(ctx, peer.AddrInfo{ID: to, Addrs: logs.Node.Host().Addrs()}); err != nil {
			return "rejected: no connection"
		}
		return "accepted"
	})
	guard("outsider (TLS, no hello) listens to pubsub", "received nothing", func() string {
		// A plain TLS libp2p host with gossipsub, subscribed to the mesh's
		// topics, while the log service publishes, until it is closed at
		// the admission deadline.
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Transport(tcp.NewTCPTransport),
			libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			return "error: " + err.Error()
		}
		defer h.Close()
		lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		ps, err := pubsub.NewGossipSub(lctx, h)
		if err != nil {
			return "error: " + err.Error()
		}
		var got atomic.Int64
		for _, name := range []string{wire.TopicRegistry, wire.TopicRevocations, "tasks"} {
			t, _ := ps.Join(name)
			sub, _ := t.Subscribe()
			go func() {
				for {
					if _, err := sub.Next(lctx); err != nil {
						return
					}
					got.Add(1)
				}
			}()
		}
		if _, err := m.Grant("log-service", []string{"publish:tasks"}, nil, time.Hour); err != nil {
			return "error: " + err.Error()
		}
		if err := h.Connect(lctx, peer.AddrInfo{ID: to, Addrs: logs.Node.Host().Addrs()}); err != nil {
			return "rejected: no connection"
		}
		for lctx.Err() == nil && h.Network().Connectedness(to) == network.Connected {
			_ = logs.Node.Publish(lctx, "tasks", "publish:tasks", []byte(`{"job":43}`))
			time.Sleep(20 * time.Millisecond)
		}
		if n := got.Load(); n > 0 {
			return fmt.Sprintf("received %d messages", n)
		}
		return "received nothing"
	})
	guard("stale request: clock 6 minutes ahead", "rejected: stale", func() string {
		var skew atomic.Int64
		late, err := m.Add(ctx, "late-agent", true, simulations.Options{Configure: func(_ string, c *node.Config) {
			c.Clock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
			// Longer than its clock's jump: its own liveness tick must not
			// declare the log service dead and close the connection first.
			c.DeadAfter = 10 * time.Minute
		}})
		if err != nil {
			return "error: " + err.Error()
		}
		if err := m.Connect(ctx, "late-agent", "log-service"); err != nil {
			return "error: " + err.Error()
		}
		_, _ = m.Grant("late-agent", []string{"read:logs"}, nil, time.Hour)
		skew.Store(int64(6 * time.Minute)) // its clock jumps after it joined
		_, err = late.Node.Call(ctx, to, "read:logs", nil, nil)
		return outcome(err)
	})

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tEXPECTED\tRESULT\tOK")
	bad := 0
	for _, r := range rows {
		ok := "yes"
		if r.got != r.want {
			ok, bad = "NO", bad+1
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.scenario, r.want, r.got, ok)
	}
	tw.Flush()
	accepted, rejectedN := 0, 0
	for _, a := range m.Audit() {
		if a.Direction == "in" && a.Kind == "request" {
			if a.Decision == "accept" {
				accepted++
			} else {
				rejectedN++
			}
		}
	}
	fmt.Fprintf(w, "\naudit: %d inbound requests accepted, %d rejected; the log-service handler ran %d times\n", accepted, rejectedN, runs())
	if bad > 0 {
		return fmt.Errorf("%d scenario(s) did not come out as they must", bad)
	}
	fmt.Fprintln(w, "every row came out as it must")
	return nil
}

// mcpEchoAction is the mesh action of the demo's MCP tool.
const mcpEchoAction = "mcp.tools:echo"

// serveMCPTool runs an MCP server (go-sdk) with one tool, echo, connected
// in memory to an MCP client session, and serves that tool on n as
// mcpEchoAction: a request's body is the tool's arguments, the reply the
// tool's CallToolResult. ran is called on each run of the tool.
func serveMCPTool(ctx context.Context, n *node.Node, ran func()) error {
	type in struct {
		Text string `json:"text"`
	}
	srv := mcp.NewServer(&mcp.Implementation{Name: "demo-tools", Version: "1"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "echo", Description: "says its text back"}, func(_ context.Context, _ *mcp.CallToolRequest, a in) (*mcp.CallToolResult, any, error) {
		ran()
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "echo: " + a.Text}}}, nil, nil
	})
	ct, st := mcp.NewInMemoryTransports()
	if _, err := srv.Connect(ctx, st, nil); err != nil {
		return err
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "demo-bridge", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		return err
	}
	return n.Handle(mcpEchoAction, func(ctx context.Context, r *node.Request) ([]byte, error) {
		var args map[string]any
		if err := json.Unmarshal(r.Body, &args); err != nil {
			return nil, err
		}
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "echo", Arguments: args})
		if err != nil {
			return nil, err
		}
		return json.Marshal(res)
	})
}

// callMCPTool calls the demo's MCP tool on to from n and reads the reply
// as an MCP tool result: "accepted: " and its text, or the refusal.
func callMCPTool(ctx context.Context, n *node.Node, to peer.ID) string {
	rep, err := n.Call(ctx, to, mcpEchoAction, []byte(`{"text":"hi"}`), nil)
	if err != nil {
		if c := trust.CodeOf(err); c != "" {
			return "rejected: " + string(c)
		}
		return "error: " + err.Error()
	}
	var res mcp.CallToolResult
	if err := json.Unmarshal(rep.Body, &res); err != nil {
		return "error: reply is not a tool result: " + err.Error()
	}
	if res.IsError || len(res.Content) == 0 {
		return "error: tool result " + string(rep.Body)
	}
	tc, ok := res.Content[0].(*mcp.TextContent)
	if !ok {
		return "error: tool result " + string(rep.Body)
	}
	return "accepted: " + tc.Text
}
