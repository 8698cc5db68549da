package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The meshagent binary, built as `make build` builds it (no meshsim tag),
// holds none of the simulation and attack hooks: no way to freeze, crash
// or partition a node, drop its messages, send bytes that skip sealing,
// or reach its libp2p host, and no code that forges a delegation.
func TestProductionBinaryHasNoHooks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the binary")
	}
	bin := filepath.Join(t.TempDir(), "meshagent")
	build := exec.Command(goTool, "build", "-trimpath", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly") // not the tests' -tags meshsim
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(goTool, "tool", "nm", bin).Output()
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
