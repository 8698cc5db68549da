package main

// Per-action tools of `meshagent mcp` (issue 14 sections 1 and 2): one
// tool per action that an alive agent advertises and that this agent
// holds a token for, named and described from the agent's signed
// advertisement (fetched and verified by the daemon, GET /v1/actions).
// The mapping is in docs/mcp.md.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/trust"
)

// mcpMaxActionTools bounds the per-action tools offered (the mesh's
// agents, alive and granted, in order of name): a client's model gets a
// list it can read, and a mesh of many agents does not grow it without
// bound. Past it, mesh_call still reaches every action.
const mcpMaxActionTools = 256

// mcpAgentPart is the longest agent name part of a per-action tool name.
const mcpAgentPart = 40

// granted returns the scopes of the tokens the daemon holds for this
// agent (GET /v1/tokens: each token's last link, when this agent holds
// it and it has not expired).
func (ms *meshMCP) granted(ctx context.Context) (map[string]bool, error) {
	var buf bytes.Buffer
	if err := ms.c.call(ctx, "GET", "/v1/tokens", nil, &buf); err != nil {
		return nil, err
	}
	var toks []trust.TokenInfo
	if err := json.Unmarshal(buf.Bytes(), &toks); err != nil {
		return nil, fmt.Errorf("local API: /v1/tokens: %v", err)
	}
	out := map[string]bool{}
	now := time.Now()
	for _, t := range toks {
		if len(t.Links) == 0 {
			continue
		}
		leaf := t.Links[len(t.Links)-1]
		k, err := trust.ParsePublicKey(leaf.Holder)
		if err != nil || k.PeerID().String() != ms.self.PeerID || !now.Before(leaf.Expires) {
			continue
		}
		for _, s := range leaf.Scopes {
			out[s] = true
		}
	}
	return out, nil
}

// actionsView completes v with the scopes granted and the advertisements
// of alive agents that advertise one of them, fetched through the daemon
// when their digest is new to this process. An advertisement the daemon
// cannot fetch now is left out (its tools come at a later poll).
func (ms *meshMCP) actionsView(ctx context.Context, v *meshView) error {
	g, err := ms.granted(ctx)
	if err != nil {
		return err
	}
	v.Granted, v.Adverts = g, map[string]*actionsView{}
	keep := map[string]bool{}
	for _, p := range v.alive() {
		if p.AdvertDigest == "" || !grantsAny(g, p.Actions) {
			continue
		}
		keep[p.AdvertDigest] = true
		ms.mu.Lock()
		ad := ms.adverts[p.AdvertDigest]
		ms.mu.Unlock()
		if ad == nil {
			var buf bytes.Buffer
			var got actionsView
			if ms.c.call(ctx, "GET", "/v1/actions?peer="+p.PeerID, nil, &buf) != nil || json.Unmarshal(buf.Bytes(), &got) != nil ||
				got.Digest != p.AdvertDigest || got.PeerID != p.PeerID {
				continue
			}
			ad = &got
			ms.mu.Lock()
			ms.adverts[p.AdvertDigest] = ad
			ms.mu.Unlock()
		}
		v.Adverts[p.PeerID] = ad
	}
	ms.mu.Lock()
	for d := range ms.adverts {
		if !keep[d] {
			delete(ms.adverts, d) // held only for alive agents' current advertisements
		}
	}
	ms.mu.Unlock()
	return nil
}

func grantsAny(g map[string]bool, scopes []string) bool {
	for _, s := range scopes {
		if g[s] {
			return true
		}
	}
	return false
}

// mcpToolChar reports whether r may appear in an MCP tool name.
func mcpToolChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-'
}

// agentToolPart is an agent's name as the first part of its tools' names:
// characters an MCP tool name cannot hold become '-', cut to
// mcpAgentPart characters ("agent" if nothing is left).
func agentToolPart(name string) string {
	b := []byte(strings.Map(func(r rune) rune {
		if mcpToolChar(r) {
			return r
		}
		return '-'
	}, name))
	if len(b) > mcpAgentPart {
		b = b[:mcpAgentPart]
	}
	if len(b) == 0 {
		return "agent"
	}
	return string(b)
}

// actionToolName is the name of the tool of scope at an agent whose name
// part is agent: AGENT__VERB__RESOURCE.
func actionToolName(agent, scope string) string {
	return agent + "__" + strings.Replace(scope, ":", "__", 1)
}

// peerSuffix tells apart agents whose name parts are equal: the first 8
// hex digits of the SHA-256 of the peer ID.
func peerSuffix(peerID string) string {
	h := sha256.Sum256([]byte(peerID))
	return hex.EncodeToString(h[:4])
}

// actionTools is the source of per-action tools.
func actionTools(ms *meshMCP) toolSource {
	return func(v meshView) []meshTool {
		parts := map[string]int{}
		for _, p := range v.alive() {
			if v.Adverts[p.PeerID] != nil {
				parts[agentToolPart(p.Name)]++
			}
		}
		var out []meshTool
		probe := mcp.NewServer(mcpImplementation, nil) // the SDK's checks of a tool, on a server nobody reaches
		for _, p := range v.alive() {
			ad := v.Adverts[p.PeerID]
			if ad == nil {
				continue
			}
			part := agentToolPart(p.Name)
			if parts[part] > 1 {
				part += "-" + peerSuffix(p.PeerID)
			}
			for _, a := range ad.Actions {
				if !v.Granted[a.Scope] || len(out) == mcpMaxActionTools {
					continue
				}
				t := ms.actionTool(p, part, a)
				if !sdkAccepts(probe, t.tool) {
					t.tool.InputSchema = map[string]any{"type": "object"}
				}
				out = append(out, t)
			}
		}
		return out
	}
}

// sdkAccepts reports whether the SDK takes t: AddTool panics on a schema
// it refuses (not of type object, an x-mcp-header on an object...), and
// no advertiser may stop `meshagent mcp` that way.
func sdkAccepts(probe *mcp.Server, t *mcp.Tool) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	probe.AddTool(t, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) { return nil, nil })
	probe.RemoveTools(t.Name)
	return true
}

// actionTool is the tool of action a of agent p.
func (ms *meshMCP) actionTool(p meshPeer, part string, a actionAd) meshTool {
	schema := map[string]any{"type": "object"}
	var m map[string]any
	if json.Unmarshal(a.InputSchema, &m) == nil && m["type"] == "object" {
		schema = m // anything else (no type, another type) is offered as any object
	}
	desc := a.Description
	if desc != "" && !strings.HasSuffix(desc, ".") {
		desc += "."
	}
	desc = strings.TrimSpace(fmt.Sprintf("%s Action %s of agent %s (%s) on the meshagent mesh, called with this agent's token; the arguments are the request body.", desc, a.Scope, p.Name, p.PeerID))
	t := &mcp.Tool{Name: actionToolName(part, a.Scope), Title: a.Name, Description: desc, InputSchema: schema,
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(true)}}
	to, scope := p.PeerID, a.Scope
	return meshTool{t, func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		body := req.Params.Arguments
		if len(bytes.TrimSpace(body)) == 0 || string(body) == "null" {
			body = json.RawMessage("{}")
		}
		// As mesh_call: the daemon's timeout for the action, the request's
		// progress token and trace context, cancelled with the request.
		ctx, cancel := context.WithTimeout(ctx, mcpMaxTimeout+5*time.Second)
		defer cancel()
		in := map[string]any{"to": to, "action": scope, "body": body}
		traceFromMeta(req.Params.Meta, in)
		out, e := ms.sendCall(ctx, req, in)
		if e != nil {
			return toolError(*e), nil
		}
		return toolResult(out), nil
	}}
}
