//go:build meshsim

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLITrustFlow(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	anchor := mustOK(t, "ca", "init", "--dir", ca)
	if !strings.HasPrefix(anchor, "12D3KooW") {
		t.Fatalf("anchor ID %q", anchor)
	}
	orch := filepath.Join(dir, "orch")
	sub := filepath.Join(dir, "sub")
	orchID := mustOK(t, "init", "--home", orch, "--name", "orchestrator")
	subID := mustOK(t, "init", "--home", sub, "--name", "sub-agent")
	if got := mustOK(t, "id", "--home", orch); got != orchID {
		t.Fatalf("id prints %q, init printed %q", got, orchID)
	}
	for _, f := range []string{filepath.Join(orch, identityFile), filepath.Join(ca, anchorKeyFile)} {
		st, _ := os.Stat(f)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s has mode %o", f, st.Mode().Perm())
		}
	}
	mustOK(t, "ca", "issue", "--dir", ca, "--agent", orchID, "--name", "orchestrator", "--out", filepath.Join(orch, credentialFile))

	tok := filepath.Join(dir, "orch.token")
	mustOK(t, "token", "issue", "--ca", ca, "--to", orchID, "--scopes", "read:logs,write:reports", "--delegatable", "read:logs", "--ttl", "1h", "--out", tok)
	del := filepath.Join(dir, "sub.token")
	mustOK(t, "token", "delegate", "--home", orch, "--token", tok, "--to", subID, "--scopes", "read:logs", "--out", del)

	// Widening is refused and named.
	r := cli(t, "token", "delegate", "--home", orch, "--token", tok, "--to", subID, "--scopes", "write:reports", "--out", filepath.Join(dir, "x"))
	if r.code != 1 || !strings.Contains(r.stderr, "escalation") || !strings.Contains(r.stderr, "write:reports") {
		t.Fatalf("widening scope: %+v", r)
	}
	r = cli(t, "token", "delegate", "--home", orch, "--token", tok, "--to", subID, "--scopes", "read:logs", "--ttl", "5h", "--out", filepath.Join(dir, "x"))
	if r.code != 1 || !strings.Contains(r.stderr, "expiry") {
		t.Fatalf("widening expiry: %+v", r)
	}
	r = cli(t, "token", "delegate", "--home", sub, "--token", tok, "--to", subID, "--scopes", "read:logs", "--out", filepath.Join(dir, "x"))
	if r.code != 1 || !strings.Contains(r.stderr, "not_holder") {
		t.Fatalf("non-holder delegating: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("a refused delegation left a file")
	}

	var info struct {
		Holder string `json:"holder"`
		Links  []struct {
			ID     string   `json:"id"`
			Scopes []string `json:"scopes"`
		} `json:"links"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "token", "inspect", del)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Holder != subID || len(info.Links) != 2 || info.Links[1].Scopes[0] != "read:logs" {
		t.Fatalf("inspect: %+v", info)
	}

	if got := mustOK(t, "token", "verify", del, "--anchor", anchor, "--holder", subID, "--action", "read:logs"); got != "valid" {
		t.Fatalf("verify: %q", got)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--holder", orchID, "--action", "read:logs"}, "invalid: not_holder"},
		{[]string{"--holder", subID, "--action", "write:reports"}, "invalid: scope_not_granted"},
		{[]string{"--at", "2099-01-01T00:00:00Z"}, "invalid: expired"},
		{[]string{"--at", "2001-01-01T00:00:00Z"}, "invalid: not_yet_valid"},
	} {
		r := cli(t, append([]string{"token", "verify", del, "--anchor", anchor}, c.args...)...)
		if r.code != 1 || !strings.HasPrefix(r.stdout, c.want) {
			t.Fatalf("verify %v: %+v, want %q", c.args, r, c.want)
		}
	}
	other := mustOK(t, "ca", "init", "--dir", filepath.Join(dir, "ca2"))
	r = cli(t, "token", "verify", del, "--anchor", other)
	if r.code != 1 || !strings.HasPrefix(r.stdout, "invalid: untrusted_root") {
		t.Fatalf("untrusted root: %+v", r)
	}

	mustOK(t, "ca", "revoke", "--dir", ca, "--token", info.Links[1].ID, "--out", filepath.Join(dir, "rev.pem"))
	mustOK(t, "ca", "revoke", "--dir", ca, "--agent", subID, "--out", filepath.Join(dir, "rev2.pem"))
}

func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"init", "--home", dir}, 2},                               // missing --name
		{[]string{"init", "--home", dir, "--name", "bad name"}, 2},         // invalid name
		{[]string{"id", "--bogus"}, 2},                                     // unknown flag
		{[]string{"frobnicate"}, 2},                                        // unknown command
		{[]string{"token", "inspect"}, 2},                                  // missing argument
		{[]string{"token", "inspect", filepath.Join(dir, "missing")}, 1},   // no such file
		{[]string{"id", "--home", filepath.Join(dir, "nohome")}, 1},        // no identity
		{[]string{"ca", "revoke", "--dir", dir, "--out", "x"}, 2},          // none of --token, --credential, --agent
		{[]string{"token", "verify", "f", "--anchor", "not-a-peer-id"}, 2}, // bad anchor
	} {
		r := cli(t, c.args...)
		if r.code != c.code || r.stderr == "" || strings.Count(r.stderr, "\n") != 0 {
			t.Errorf("meshagent %v: exit %d stderr %q, want exit %d and one line", c.args, r.code, r.stderr, c.code)
		}
	}
	// A key file readable by others is refused, as ssh does.
	home := filepath.Join(dir, "a")
	mustOK(t, "init", "--home", home, "--name", "a")
	os.Chmod(filepath.Join(home, identityFile), 0o644)
	r := cli(t, "id", "--home", home)
	if r.code != 1 || !strings.Contains(r.stderr, "chmod 600") {
		t.Fatalf("loose key file: %+v", r)
	}
	// init refuses to overwrite an identity.
	os.Chmod(filepath.Join(home, identityFile), 0o600)
	if r := cli(t, "init", "--home", home, "--name", "a"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("re-init: %+v", r)
	}
}

// The demo lives in cmd/meshagent-demo: `meshagent demo` says so in one
// line (a usage error), the usage does not list it, and the daemon binary
// does not carry the simulations package it is built from.
func TestDemoMovedOut(t *testing.T) {
	r := cli(t, "demo")
	if r.code != 2 || r.stdout != "" || r.stderr != "meshagent: "+demoMoved {
		t.Fatalf("meshagent demo: %+v", r)
	}
	if help := mustOK(t, "--help"); strings.Contains(help, "demo") {
		t.Fatalf("the usage lists the demo:\n%s", help)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to list the binary's packages")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/meshagent/meshagent/simulations") {
			t.Fatalf("the meshagent binary imports %s", p)
		}
	}
}
