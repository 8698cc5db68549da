package main

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/meshagent/meshagent/trust"
)

func TestMCPScopeMapping(t *testing.T) {
	h := func(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:])[:8] }
	long := strings.Repeat("a", 128)
	for _, c := range []struct{ tool, want string }{
		{"echo", "echo"},                                   // already a scope part: unchanged
		{"read_file", "read_file"},                         // '_' inside is allowed
		{"get-resource.v2", "get-resource.v2"},             // so are '-' and '.'
		{"0day", "0day"},                                   // a leading digit too
		{strings.Repeat("x", 31), strings.Repeat("x", 31)}, // 31 characters fit
		{"Echo", "echo-" + h("Echo")},                      // uppercase: lowercased, hashed
		{"readFile", "readfile-" + h("readFile")},          // mixed case
		{"_private", "private-" + h("_private")},           // a leading '_' is not allowed: dropped
		{"._-", "tool-" + h("._-")},                        // nothing left
		{strings.Repeat("x", 32), strings.Repeat("x", 22) + "-" + h(strings.Repeat("x", 32))},
		{long, strings.Repeat("a", 22) + "-" + h(long)}, // 128 characters, the MCP maximum
		{"has space/slash", "has-space-slash-" + h("has space/slash")},
	} {
		got := mcpResource(c.tool)
		if got != c.want {
			t.Errorf("mcpResource(%q) = %q, want %q", c.tool, got, c.want)
		}
		if err := trust.ValidateScope("mcp.files:" + got); err != nil {
			t.Errorf("scope of %q: %v", c.tool, err)
		}
	}

	// Case never collides: the hash is of the exact name.
	if mcpResource("Echo") == mcpResource("ECHO") || mcpResource("Echo") == mcpResource("echo") {
		t.Error("case variants share a scope")
	}
	// Two 128-character names with the same first 22 characters differ.
	if mcpResource(long) == mcpResource(strings.Repeat("a", 127)+"b") {
		t.Error("long names with one prefix share a scope")
	}

	m, err := mapMCPTools("files", []string{"read_file", "Echo"})
	if err != nil || len(m) != 2 || m[0] != (mcpToolScope{"Echo", "mcp.files:echo-" + h("Echo")}) || m[1] != (mcpToolScope{"read_file", "mcp.files:read_file"}) {
		t.Fatalf("mapMCPTools = %v, %v", m, err)
	}

	// A tool named like another's derived form collides: refused, naming both.
	derived := "echo-" + h("Echo")
	_, err = mapMCPTools("files", []string{"Echo", derived})
	if err == nil || !strings.Contains(err.Error(), `"Echo"`) || !strings.Contains(err.Error(), `"`+derived+`"`) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("collision: %v", err)
	}
	if _, err := mapMCPTools("files", []string{"echo", "echo"}); err == nil {
		t.Fatal("a tool listed twice was accepted")
	}
	if _, err := mapMCPTools("files", []string{""}); err == nil {
		t.Fatal("an empty tool name was accepted")
	}

	// Server names: the verb mcp.NAME must be a scope part.
	for _, bad := range []string{"", "Files", "-x", "a:b", "a*", strings.Repeat("n", 28)} {
		if _, err := mcpVerb(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("mcpVerb(%q) = %v, want a one-line error", bad, err)
		}
	}
	for _, good := range []string{"files", "gh.v2", "a", strings.Repeat("n", 27)} {
		if v, err := mcpVerb(good); err != nil || v != "mcp."+good {
			t.Errorf("mcpVerb(%q) = %q, %v", good, v, err)
		}
	}
}

func TestMCPLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:0", "127.0.0.1:8080", "[::1]:9", "localhost:7000", "127.1.2.3:1"} {
		if err := checkLoopback(ok); err != nil {
			t.Errorf("checkLoopback(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:8080", ":8080", "10.0.0.1:80", "[::]:80", "example.com:80", "127.0.0.1"} {
		if err := checkLoopback(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("checkLoopback(%q) = %v, want a one-line error", bad, err)
		}
	}
}
