package main

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The meshagent binary, built as `make release` builds it (no meshsim tag),
// holds none of the simulation and attack hooks: no way to freeze, crash
// or partition a node, drop its messages, send bytes that skip sealing,
// or reach its libp2p host, and no code that forges a delegation.
func TestProductionBinaryHasNoHooks(t *testing.T) {
	bin := releaseBinary(t) // version_test.go
	out, err := exec.Command("go", "tool", "nm", bin).Output()
	if err != nil {
		t.Fatalf("go tool nm: %v", err)
	}
	hooks := regexp.MustCompile(`meshagent/node\.\(\*Node\)\.(Freeze|Crash|SendRaw|SealRequest|SealMessage|PublishRaw|SetDropMessage|SetPeerFilter|Host|Verifier)$|trusttest|meshagent/simulations`)
	syms := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		name := f[len(f)-1]
		if strings.Contains(name, "meshagent/node.") {
			syms++
		}
		if hooks.MatchString(name) {
			t.Errorf("the production binary holds %s", name)
		}
	}
	if syms < 50 { // the symbol table is read: the node is there
		t.Fatalf("only %d symbols of package node in the binary: the check reads nothing", syms)
	}
}
