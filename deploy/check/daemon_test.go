package check

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The meshagent binary, built once from the repository (../..) as `make
// release` builds it, without stamping.
var binary struct {
	once     sync.Once
	dir, bin string
	err      error
	out      []byte
}

func meshagentBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	binary.once.Do(func() {
		if binary.dir, binary.err = os.MkdirTemp("", "meshagent-check"); binary.err != nil {
			return
		}
		binary.bin = filepath.Join(binary.dir, "meshagent")
		build := exec.Command("go", "build", "-trimpath", "-o", binary.bin, "./cmd/meshagent")
		build.Dir = filepath.Join("..", "..")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		binary.out, binary.err = build.CombinedOutput()
	})
	if binary.err != nil {
		t.Fatalf("go build: %v\n%s", binary.err, binary.out)
	}
	return binary.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

// meshagent runs the CLI and returns its stdout, failing the test unless
// it exits 0.
func meshagent(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(meshagentBinary(t), args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshagent %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFor polls f every 100 ms until it returns nil or d passed.
func waitFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// daemon is a meshagent daemon process of a test.
type daemon struct {
	home, id, metrics string
}

// startDaemon enrols name with the CA in ca, writes its config (anything
// in extra added) and runs `meshagent run` until the test ends.
func startDaemon(t *testing.T, root, ca, anchor, name string, extra string) *daemon {
	t.Helper()
	home := filepath.Join(root, name)
	id := meshagent(t, "init", "--home", home, "--name", name)
	meshagent(t, "ca", "issue", "--dir", ca, "--agent", id, "--name", name, "--out", filepath.Join(home, "credential.pem"))
	meshagent(t, "token", "issue", "--ca", ca, "--to", id, "--scopes", "ping:agent", "--out", filepath.Join(home, "agent.token"))
	d := &daemon{home: home, id: id, metrics: freeAddr(t)}
	cfg := fmt.Sprintf(`name: %s
listen: [/ip4/127.0.0.1/tcp/0]
anchors: [%s]
credential: credential.pem
tokens: [agent.token]
audit_log: audit.log
api_socket: api.sock
metrics_listen: %s
%s`, name, anchor, d.metrics, extra)
	if err := os.WriteFile(filepath.Join(home, "meshagent.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, meshagentBinary(t), "run", "--home", home)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("daemon %s said:\n%s", name, logs.String())
		}
	})
	waitFor(t, 20*time.Second, func() error {
		_, err := get(d.metrics, "/healthz")
		return err
	})
	return d
}

// get GETs path on addr and returns the body of a 200 answer.
func get(addr, path string) (string, error) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("%s: %s: %s", path, resp.Status, body)
	}
	return string(body), err
}

// scrapeMesh runs two daemons, bob and alice (who bootstraps from bob),
// has alice call bob once with success and once refused, and returns the
// metric names on their /metrics pages (a histogram's _bucket, _sum and
// _count each).
func scrapeMesh(t *testing.T) map[string]bool {
	t.Helper()
	root, err := os.MkdirTemp("", "dc") // short: a socket path has at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	ca := filepath.Join(root, "ca")
	anchor := meshagent(t, "ca", "init", "--dir", ca)
	bob := startDaemon(t, root, ca, anchor, "bob", "")
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(meshagent(t, "status", "--home", bob.home)), &st); err != nil || len(st.ListenAddrs) == 0 {
		t.Fatalf("bob's status: %v %v", st, err)
	}
	alice := startDaemon(t, root, ca, anchor, "alice", "bootstrap: ["+st.ListenAddrs[0]+"]\n")
	waitFor(t, 20*time.Second, func() error {
		_, err := get(alice.metrics, "/readyz")
		return err
	})
	meshagent(t, "send", "--home", alice.home, "--to", bob.id, "--action", "ping:agent", "--timeout", "5s")
	refused := exec.Command(meshagentBinary(t), "send", "--home", alice.home, "--to", bob.id, "--action", "read:logs", "--timeout", "5s")
	if out, err := refused.CombinedOutput(); err == nil {
		t.Fatalf("a call without a token succeeded: %s", out)
	}
	names := map[string]bool{}
	for _, d := range []*daemon{alice, bob} {
		page, err := get(d.metrics, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for name := range metricNames(page) {
			names[name] = true
		}
	}
	return names
}

// metricNames are the names of the samples on a /metrics page in the text
// format.
func metricNames(page string) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		if i := strings.IndexAny(l, "{ "); i > 0 {
			names[l[:i]] = true
		}
	}
	return names
}
