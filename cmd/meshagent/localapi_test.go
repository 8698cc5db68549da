//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
)

// othersCanConnect reports why a user other than the owner could connect to
// the socket at path right now (it exists, group or others may write it and
// may search every directory above it), or "" if none could.
func othersCanConnect(path string) string {
	st, err := os.Lstat(path)
	if err != nil || st.Mode().Perm()&0o022 == 0 {
		return ""
	}
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		ds, err := os.Stat(d)
		if err != nil || ds.Mode().Perm()&0o011 == 0 {
			return ""
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return fmt.Sprintf("%s has mode %04o in directories others may search", path, st.Mode().Perm())
}

// Under a umask that lets everyone in, in a home that others may enter
// (0755, as a home may be), the API socket is never reachable by another
// user: at the instant it is bound, neither the bound path nor the
// configured path can be connected to by others, and once the daemon runs
// the socket is 0600 and nothing is left beside it.
func TestAPISocketNeverReachableByOthers(t *testing.T) {
	dir, anchor, a, _ := enrolled(t)
	for _, d := range []string{filepath.Dir(dir), dir, a} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(a, "api.sock")
	// A stale socket of a daemon that died is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if err := os.Chmod(sock, 0o600); err != nil {
		t.Fatal(err)
	}

	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	var bound []string
	var exposed []string
	testHookSocketBound = func(path string) {
		bound = append(bound, path)
		paths := []string{path, sock}
		if path == sock {
			paths = paths[:1]
		}
		for _, p := range paths {
			if why := othersCanConnect(p); why != "" {
				exposed = append(exposed, why)
			}
		}
	}
	t.Cleanup(func() { testHookSocketBound = nil })
	startDaemon(t, a, daemonConfig("alice", anchor))
	syscall.Umask(old)

	if len(bound) != 1 {
		t.Fatalf("socket bound %d times", len(bound))
	}
	if len(exposed) > 0 {
		t.Fatalf("the API socket was reachable by other users when bound: %s", strings.Join(exposed, "; "))
	}
	st, err := os.Lstat(sock)
	if err != nil || st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Fatalf("api socket: %v %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(a)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".api") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}
	mustOK(t, "status", "--home", a)
}

// The daemon refuses, in one line and before it starts, a socket directory
// that another user could write to (and so replace the socket under the
// daemon's clients) or that another user owns; it refuses a path taken by
// something other than a socket, and a socket another daemon serves.
func TestDaemonRefusesUnsafeSocketPlace(t *testing.T) {
	dir, anchor, a, _ := enrolled(t)
	try := func(fc *fileConfig, want string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err := serveDaemon(ctx, a, fc, func(*node.Node) {
			t.Errorf("the daemon started (want a refusal naming %q)", want)
			cancel()
		}, daemonLog(t, a))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("want one line naming %q, got %v", want, err)
		}
	}
	// A group-writable directory, and a shared one such as /tmp (sticky,
	// world-writable). (The home itself is checked too, with its keys.)
	fc := daemonConfig("alice", anchor)
	for name, mode := range map[string]os.FileMode{"group": 0o775, "shared": 0o1777} {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		fc.APISocket = filepath.Join(d, "api.sock")
		try(fc, "writable by group or others")
	}
	// A directory of another user.
	if os.Geteuid() == 0 {
		theirs := filepath.Join(dir, "theirs")
		if err := os.Mkdir(theirs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(theirs, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		fc.APISocket = filepath.Join(theirs, "api.sock")
		try(fc, "owned by uid 4242")
	}
	// A file in the socket's place is not replaced.
	fc.APISocket = credentialFile
	try(fc, "not a socket")
	if _, err := trust.ParseCredential(mustReadCredential(t, filepath.Join(a, credentialFile))); err != nil {
		t.Fatalf("credential damaged: %v", err)
	}
	// A second daemon on the same socket does not steal it.
	startDaemon(t, a, daemonConfig("alice", anchor))
	try(daemonConfig("alice", anchor), "another daemon is serving it")
	mustOK(t, "status", "--home", a)
}

func mustReadCredential(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := trust.DecodePEM(data, trust.PEMCredential)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Persisted revocations that no longer apply (from an anchor removed from
// the config since, in a format that no longer parses, with a bad
// signature) do not stop the daemon: it starts, says one line per file
// what it dropped and why, applies the one that does apply, and deletes
// nothing.
func TestDaemonDropsRevocationsThatNoLongerApply(t *testing.T) {
	dir, anchor, a, _ := enrolled(t)
	ca, removed := filepath.Join(dir, "ca"), filepath.Join(dir, "removed")
	removedID := mustOK(t, "ca", "init", "--dir", removed)
	revs := filepath.Join(a, "revocations")
	if err := os.Mkdir(revs, 0o700); err != nil {
		t.Fatal(err)
	}
	const link1, link2 = "00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"
	mustOK(t, "ca", "revoke", "--dir", removed, "--token", link1, "--out", filepath.Join(revs, "removed.pem"))
	mustOK(t, "ca", "revoke", "--dir", ca, "--token", link1, "--out", filepath.Join(revs, "valid.pem"))
	if err := os.WriteFile(filepath.Join(revs, "garbage.pem"), trust.EncodePEM([]byte("an older format"), trust.PEMRevocation), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.pem")
	mustOK(t, "ca", "revoke", "--dir", ca, "--token", link2, "--out", good)
	data, _ := os.ReadFile(good)
	raw, err := trust.DecodePEM(data, trust.PEMRevocation)
	if err != nil {
		t.Fatal(err)
	}
	var s trustpb.Signed
	if err := proto.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	s.Signature[0] ^= 1
	forged, _ := proto.Marshal(&s)
	if err := os.WriteFile(filepath.Join(revs, "forged.pem"), trust.EncodePEM(forged, trust.PEMRevocation), 0o600); err != nil {
		t.Fatal(err)
	}

	var log syncBuffer
	n := startDaemonLogging(t, a, daemonConfig("alice", anchor), &log)
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	// The last line says the daemon is up (TestRunSaysWhenUp).
	if up := lines[len(lines)-1]; !strings.HasPrefix(up, "meshagent: up: peer "+n.ID().String()) {
		t.Fatalf("the last line is not the daemon's up line:\n%s", log.String())
	}
	lines = lines[:len(lines)-1]
	want := map[string]string{
		"removed.pem": "issuer " + removedID + " is no longer a trusted anchor",
		"garbage.pem": "no longer parses",
		"forged.pem":  "does not verify",
	}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), log.String())
	}
	for _, l := range lines {
		name := ""
		for f := range want {
			if strings.HasPrefix(l, "meshagent: dropped revocation "+filepath.Join(revs, f)+": ") {
				name = f
			}
		}
		if name == "" || !strings.Contains(l, want[name]) {
			t.Fatalf("unexpected line %q", l)
		}
		delete(want, name)
	}
	if got := n.Stats().Revocations; got != 1 {
		t.Fatalf("the node holds %d revocations, want the valid one", got)
	}
	for _, f := range []string{"removed.pem", "garbage.pem", "forged.pem", "valid.pem"} {
		if _, err := os.Stat(filepath.Join(revs, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// One local process per action: a second handler is refused (409, and the
// CLI exits 1 with the line) and never runs, the first keeps its calls;
// once the first is gone another may take the action; the daemon's own
// ping:agent can never be taken over.
func TestOneHandlerPerAction(t *testing.T) {
	a, b, _, bID := pair(t)
	marks := t.TempDir()
	firstRan, secondRan, pingRan := filepath.Join(marks, "first"), filepath.Join(marks, "second"), filepath.Join(marks, "ping")
	first := background(t, "handle", "--home", b, "--action", "read:logs", "--count", "2", "--",
		"sh", "-c", `echo x >> "$0"; printf '{"by":"first"}'`, firstRan)
	served := func(by string) {
		t.Helper()
		if err := simulations.WaitFor(10*time.Second, func() error {
			r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs")
			if r.code != 0 {
				return errors.New(r.stderr)
			}
			if !strings.Contains(r.stdout, `"by":"`+by+`"`) {
				t.Fatalf("served by someone else: %s", r.stdout)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	served("first")

	r := within(t, 10*time.Second, "handle", "--home", b, "--action", "read:logs", "--", "sh", "-c", `touch "$0"`, secondRan)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, "read:logs is already handled") {
		t.Fatalf("second handler: %+v", r)
	}
	_, code, body := openStream(t, b, "/v1/handle?action=read:logs")
	var e apiError
	if code != 409 || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, "read:logs") || e.Code != "already_handled" {
		t.Fatalf("second /v1/handle: %d %s", code, body)
	}
	served("first") // its second and last request
	if r := first(); r.code != 0 {
		t.Fatalf("first handler: %+v", r)
	}
	if _, err := os.Stat(secondRan); err == nil {
		t.Fatal("the refused handler ran")
	}

	// The first is gone: a new handler gets the action and its calls.
	var third *sseStream
	if err := simulations.WaitFor(10*time.Second, func() error {
		s, code, body := openStream(t, b, "/v1/handle?action=read:logs")
		if code != 200 {
			return fmt.Errorf("%d %s", code, body)
		}
		third = s
		return nil
	}); err != nil {
		t.Fatalf("no new handler after the first left: %v", err)
	}
	call := background(t, "send", "--home", a, "--to", bID, "--action", "read:logs")
	var ev struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(third.next(t, 10*time.Second)), &ev); err != nil {
		t.Fatal(err)
	}
	if err := apiCall(b, "POST", "/v1/reply", map[string]any{"id": ev.ID, "body": map[string]string{"by": "third"}}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if r := call(); r.code != 0 || !strings.Contains(r.stdout, `"by":"third"`) {
		t.Fatalf("call served by the new handler: %+v", r)
	}
	third.close()

	// ping:agent belongs to the daemon.
	_, code, body = openStream(t, b, "/v1/handle?action=ping:agent")
	if code != 409 || !strings.Contains(body, "ping:agent") {
		t.Fatalf("/v1/handle of ping:agent: %d %s", code, body)
	}
	r = within(t, 10*time.Second, "handle", "--home", b, "--action", "ping:agent", "--count", "1", "--", "sh", "-c", `touch "$0"`, pingRan)
	if r.code != 1 || strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, "ping:agent is served by the daemon itself") {
		t.Fatalf("handle ping:agent: %+v", r)
	}
	if out := mustOK(t, "send", "--home", a, "--to", bID, "--action", "ping:agent"); !strings.Contains(out, `"pong":"bob"`) {
		t.Fatalf("ping:agent: %s", out)
	}
	if _, err := os.Stat(pingRan); err == nil {
		t.Fatal("the refused ping:agent handler ran")
	}
}

// A client that sends half a request body is disconnected once the read
// timeout has passed; streams and calls that last longer than the read
// timeout are not cut by it.
func TestAPIReadTimeout(t *testing.T) {
	old := apiReadTimeout
	apiReadTimeout = time.Second
	t.Cleanup(func() { apiReadTimeout = old })
	a, b, _, bID := pair(t)

	c, err := net.Dial("unix", filepath.Join(a, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprint(c, "POST /v1/send HTTP/1.1\r\nHost: meshagent\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"to\":")
	bound := apiReadTimeout + time.Second
	_ = c.SetReadDeadline(start.Add(bound + 5*time.Second))
	_, err = io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a half-sent request still holds its connection after %s", time.Since(start))
	}
	if took := time.Since(start); took > bound {
		t.Fatalf("disconnected after %s, want at most %s", took, bound)
	}

	// Streams opened now outlive the read timeout.
	handle, code, body := openStream(t, b, "/v1/handle?action=read:logs")
	if code != 200 {
		t.Fatalf("handle: %d %s", code, body)
	}
	sub, code, body := openStream(t, a, "/v1/subscribe?topic=tasks")
	if code != 200 {
		t.Fatalf("subscribe: %d %s", code, body)
	}
	time.Sleep(2 * apiReadTimeout) // past the read deadline of both
	// A call whose reply takes longer than the read timeout.
	call := background(t, "send", "--home", a, "--to", bID, "--action", "read:logs", "--timeout", "20s")
	var ev struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(handle.next(t, 10*time.Second)), &ev); err != nil {
		t.Fatal(err)
	}
	time.Sleep(apiReadTimeout + apiReadTimeout/2)
	if err := apiCall(b, "POST", "/v1/reply", map[string]any{"id": ev.ID, "body": map[string]string{"late": "yes"}}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if r := call(); r.code != 0 || !strings.Contains(r.stdout, `"late":"yes"`) {
		t.Fatalf("slow call: %+v", r)
	}
	// bob publishes until alice's subscription, opened long ago, delivers.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cli(t, "publish", "--home", b, "--topic", "tasks", "--action", "publish:tasks", "--body", `{"job":1}`)
		select {
		case l, ok := <-sub.lines:
			if !ok {
				t.Fatal("the subscription ended")
			}
			if !strings.Contains(l, `"job":1`) {
				t.Fatalf("subscription: %s", l)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no message delivered")
		}
	}
}
