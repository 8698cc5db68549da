//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

func TestDaemonAndLocalAPI(t *testing.T) {
	m := newTestMesh(t)
	a, aID, fa := m.agent("alice", "ping:agent")
	b, bID, fb := m.agent("bob", "")

	// The default config written by init parses and names the agent.
	fc, err := loadFileConfig(a)
	if err != nil || fc.Name != "alice" || fc.APISocket != "api.sock" {
		t.Fatalf("default config: %+v %v", fc, err)
	}

	m.start(a, fa, m.start(b, fb))

	st, _ := os.Stat(filepath.Join(a, "api.sock"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("api socket mode %o", st.Mode().Perm())
	}
	var status struct {
		PeerID      string   `json:"peer_id"`
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "status", "--home", a)), &status); err != nil {
		t.Fatal(err)
	}
	if status.PeerID != aID || len(status.ListenAddrs) == 0 || !strings.HasSuffix(status.ListenAddrs[0], "/p2p/"+aID) {
		t.Fatalf("status: %+v", status)
	}
	if err := simulations.WaitFor(5*time.Second, func() error {
		if !strings.Contains(mustOK(t, "peers", "--home", a), bID) {
			return os.ErrNotExist
		}
		return nil
	}); err != nil {
		t.Fatal("bob never listed as a peer of alice")
	}
	var rep struct {
		Body          map[string]string `json:"body"`
		CorrelationID string            `json:"correlation_id"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "send", "--home", a, "--to", bID, "--action", "ping:agent")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Body["pong"] != "bob" || len(rep.CorrelationID) != 32 {
		t.Fatalf("send: %+v", rep)
	}
	// Bob holds no token: his call is rejected by alice, with the reason.
	r := cli(t, "send", "--home", b, "--to", aID, "--action", "ping:agent")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "meshagent: no_token: ") || strings.Count(r.stderr, "no_token") != 1 {
		t.Fatalf("unauthorized send: %+v", r)
	}
	// Metrics, on the local API: the credential, the registry, the
	// decisions (the rejection included) and libp2p's own.
	var metrics strings.Builder
	if err := apiCall(a, "GET", "/metrics", nil, &metrics); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"meshagent_credential_seconds_left", `meshagent_registry_agents{state="alive"} 1`,
		`meshagent_decisions_total{decision="reject",direction="in",kind="request",reason="no_token"} 1`, "libp2p_"} {
		if !strings.Contains(metrics.String(), want) {
			t.Fatalf("metrics lack %q", want)
		}
	}
	// The audit log has both calls and no bodies.
	audit, _ := os.ReadFile(filepath.Join(a, "audit.log"))
	if !strings.Contains(string(audit), rep.CorrelationID) || !strings.Contains(string(audit), `"reason":"no_token"`) || strings.Contains(string(audit), "pong") {
		t.Fatalf("audit log:\n%s", audit)
	}
}

func TestDaemonRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "a")
	mustOK(t, "init", "--home", home, "--name", "alice")
	r := cli(t, "run", "--home", home)
	if r.code != 1 || !strings.Contains(r.stderr, "anchors") {
		t.Fatalf("no anchors: %+v", r)
	}
	r = cli(t, "run", "--home", home, "--anchor", "bogus")
	if r.code != 1 || !strings.Contains(r.stderr, "anchors") {
		t.Fatalf("bad anchor: %+v", r)
	}
}

// Through the binary: 'meshagent run' says on stderr, in one line, when it
// is up: its peer ID, every address it listens on, its API socket. It
// prints nothing else, and nothing on stdout.
func TestRunSaysWhenUp(t *testing.T) {
	_, anchor, home, id := enrolled(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- runContext(ctx, []string{"run", "--home", home, "--anchor", anchor}, &stdout, &stderr) }()
	if err := simulations.WaitFor(20*time.Second, func() error {
		select {
		case code := <-done:
			t.Fatalf("run exited %d: %s", code, stderr.String())
		default:
		}
		if !strings.Contains(stderr.String(), "\n") {
			return errors.New("no line yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "status", "--home", home)), &st); err != nil || len(st.ListenAddrs) < 2 {
		t.Fatalf("status: %+v %v", st, err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("run exited %d: %s", code, stderr.String())
	}
	up := regexp.MustCompile(`^meshagent: up: peer (\S+) listening on (.+); local API on (\S+)\n$`).FindStringSubmatch(stderr.String())
	if up == nil || stdout.String() != "" {
		t.Fatalf("stderr %q, stdout %q; want one up line on stderr", stderr.String(), stdout.String())
	}
	addrs := strings.Fields(up[2])
	slices.Sort(addrs)
	slices.Sort(st.ListenAddrs)
	if up[1] != id || !slices.Equal(addrs, st.ListenAddrs) || up[3] != filepath.Join(home, "api.sock") {
		t.Fatalf("up line %q: want peer %s, addresses %v, socket %s", up[0], id, st.ListenAddrs, filepath.Join(home, "api.sock"))
	}
}
