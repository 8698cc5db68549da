//go:build meshsim

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The config is strict: what it does not know is a one-line error naming
// it; the config that init writes, an empty one and one of comments only
// parse.
func TestConfigIsStrict(t *testing.T) {
	for _, c := range []struct {
		yaml string
		want string // "" when it parses
	}{
		{fmt.Sprintf(defaultConfig, "alice"), ""},
		{"", ""},
		{"# nothing set\n", ""},
		{"heartbeat: 2s\ndead_after: 1m\n", ""},
		{"name: alice\ntypo_field: 3\n", `line 2: unknown field "typo_field"`},
		{"anchor: [12D3KooW]\n", `line 1: unknown field "anchor"`},
		{"listen: []\nAPI_socket: x\nmdns: true\nmnds: true\n", `line 2: unknown field "API_socket"; line 4: unknown field "mnds"`},
		{"audit_log_max_bytes: lots\n", "line 1: cannot unmarshal"},
		{"heartbeat: often\n", "line 1: cannot unmarshal"},
		{"- name: alice\n", "cannot unmarshal !!seq into the config's fields"},
		{"name: alice\n---\nname: bob\n", "line 2: a second YAML document"},
		{"name: [alice\n", "line"},
		{"name: alice\nname: bob\n", `line 2: mapping key "name" already defined at line 1`},
	} {
		fc, err := parseFileConfig([]byte(c.yaml))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.yaml, err)
		case c.want == "":
		case err == nil:
			t.Errorf("%q parsed (%+v), want an error naming %q", c.yaml, fc, c.want)
		case !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "main."):
			t.Errorf("%q: %q, want one line naming %q", c.yaml, err, c.want)
		}
	}
	fc, err := parseFileConfig([]byte("heartbeat: 2s\ndead_after: 1m\n"))
	if err != nil || fc.Heartbeat != 2*time.Second || fc.DeadAfter != time.Minute {
		t.Fatalf("durations: %+v %v", fc, err)
	}
}

// Through the binary: a misspelt field in meshagent.yaml stops 'meshagent
// run' before anything starts (exit 1, one line naming the field and the
// file, nothing written in the home), and the clients of the local API
// refuse it too.
func TestRunRefusesUnknownConfigField(t *testing.T) {
	_, _, home, _ := enrolled(t)
	path := filepath.Join(home, configFile)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "typo_field: 3\n")
	f.Close()
	before := listTree(t, home)
	r := cli(t, "run", "--home", home)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, `unknown field "typo_field"`) || !strings.Contains(r.stderr, path) {
		t.Fatalf("run with typo_field: %+v", r)
	}
	if after := listTree(t, home); after != before {
		t.Fatalf("a refused run wrote in its home:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	r = cli(t, "status", "--home", home)
	if r.code != 1 || !strings.Contains(r.stderr, `unknown field "typo_field"`) {
		t.Fatalf("status with typo_field: %+v", r)
	}
}

// listTree is every path under dir with its mode, size and modification
// time, one a line.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", p, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
