package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/meshagent/meshagent/trust"
)

// The mapping from the tools of an MCP server served with `meshagent mcp
// serve --name NAME` to the scopes (mesh actions) they are served as. See
// docs/mcp.md, "Name mapping".
//
// A scope is verb:resource, each part 1-31 characters of [a-z0-9._-]
// starting with a letter or digit (trust.ValidateScope). An MCP tool name
// is up to 128 characters of [A-Za-z0-9_.-], mixed case. The scope of tool
// T of server NAME is
//
//	mcp.NAME:T                  when T is already a valid scope part
//	                            (lowercase, at most 31 characters, starts
//	                            with a letter or digit): T unchanged
//	mcp.NAME:BASE-HHHHHHHH      otherwise: BASE is T lowercased, every other
//	                            character made '-', leading '.', '_' and
//	                            '-' dropped, cut to 22 characters ("tool"
//	                            if nothing is left); HHHHHHHH is the first
//	                            8 hex digits of SHA-256 of T exactly as the
//	                            server names it
//
// so "Echo" and "echo" never share a scope, and a long name keeps a
// readable prefix. Two tools that still map to one scope (a tool literally
// named like another's derived form, or a hash collision) are refused at
// start, naming both: the mapping is exact or it is not served.

const (
	mcpVerbPrefix   = "mcp."
	mcpHashDigits   = 8
	mcpMaxBase      = trust.MaxScopePart - 1 - mcpHashDigits // 22
	mcpMaxNameChars = trust.MaxScopePart - len(mcpVerbPrefix)
)

// mcpVerb is the verb of the scopes of the MCP server name, or an error
// when name cannot be one (one line, saying what a name may be).
func mcpVerb(name string) (string, error) {
	verb := mcpVerbPrefix + name
	if name == "" || trust.ValidateScope(name+":x") != nil || trust.ValidateScope(verb+":x") != nil {
		return "", fmt.Errorf("--name %q: want 1-%d characters of [a-z0-9._-] starting with a letter or digit (the scopes are mcp.NAME:TOOL)", name, mcpMaxNameChars)
	}
	return verb, nil
}

// mcpResource is the resource part of the scope of the tool named tool.
func mcpResource(tool string) string {
	if trust.ValidateScope("x:"+tool) == nil {
		return tool
	}
	base := []byte(strings.ToLower(tool))
	for i, c := range base {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			base[i] = '-'
		}
	}
	b := strings.TrimLeft(string(base), "._-")
	if len(b) > mcpMaxBase {
		b = b[:mcpMaxBase]
	}
	if b == "" {
		b = "tool"
	}
	sum := sha256.Sum256([]byte(tool))
	return b + "-" + hex.EncodeToString(sum[:])[:mcpHashDigits]
}

// mcpToolScope is one tool and the scope it is served as.
type mcpToolScope struct {
	Tool, Scope string
}

// mapMCPTools maps the tools of the MCP server name to their scopes,
// sorted by scope. Two tools with one scope are refused, in one line that
// names both.
func mapMCPTools(name string, tools []string) ([]mcpToolScope, error) {
	verb, err := mcpVerb(name)
	if err != nil {
		return nil, err
	}
	byScope := map[string]string{}
	out := make([]mcpToolScope, 0, len(tools))
	for _, t := range tools {
		if t == "" {
			return nil, fmt.Errorf("the MCP server lists a tool with an empty name")
		}
		s := verb + ":" + mcpResource(t)
		if other, ok := byScope[s]; ok {
			return nil, fmt.Errorf("tools %q and %q both map to scope %s: rename one (docs/mcp.md, name mapping)", other, t, s)
		}
		byScope[s] = t
		out = append(out, mcpToolScope{Tool: t, Scope: s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Scope < out[j].Scope })
	return out, nil
}
