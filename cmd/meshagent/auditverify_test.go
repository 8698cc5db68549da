//go:build meshsim

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// stoppableDaemon starts the daemon at home with fc and returns its node
// and a function that stops it and waits until it has (it is stopped at
// the test's end too).
func stoppableDaemon(t *testing.T, home string, fc *fileConfig) (*node.Node, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *node.Node, 1)
	done := make(chan error, 1)
	go func() { done <- serveDaemon(ctx, home, fc, func(n *node.Node) { ready <- n }, daemonLog(t, home)) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon %s: %v", home, err)
		}
	}
	t.Cleanup(stop)
	select {
	case n := <-ready:
		return n, stop
	case err := <-done:
		stopped = true
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not start in time")
	}
	return nil, nil
}

// auditedMesh is bob's daemon, audited into files of at most 4 KiB with a
// checkpoint every 7 lines, called by alice's.
type auditedMesh struct {
	m       *testMesh
	a, b    string // homes
	bID     string
	fb      *fileConfig
	stopBob func()
	aAddr   string // alice's first address
}

func newAuditedMesh(t *testing.T) *auditedMesh {
	t.Helper()
	m := newTestMesh(t)
	a, _, fa := m.agent("alice", "ping:agent")
	b, bID, fb := m.agent("bob", "")
	fb.AuditLogMaxBytes, fb.AuditCheckpointLines = 4096, 7
	nb, stop := stoppableDaemon(t, b, fb)
	fa.Bootstrap = []string{nb.Addrs()[0].String()}
	na := startDaemon(t, a, fa)
	return &auditedMesh{m: m, a: a, b: b, bID: bID, fb: fb, stopBob: stop, aAddr: na.Addrs()[0].String()}
}

// restartBob starts bob's daemon again (stopped before), bootstrapping
// from alice, with its audit files max bytes, and waits until alice can
// call it.
func (am *auditedMesh) restartBob(t *testing.T, max int64) {
	t.Helper()
	fb := *am.fb
	fb.AuditLogMaxBytes, fb.Bootstrap = max, []string{am.aAddr}
	_, am.stopBob = stoppableDaemon(t, am.b, &fb)
	if err := simulations.WaitFor(20*time.Second, func() error {
		return apiCall(am.a, "POST", "/v1/send", map[string]any{"to": am.bID, "action": "ping:agent"}, new(bytes.Buffer))
	}); err != nil {
		t.Fatal(err)
	}
}

// ping calls bob from alice n times.
func (am *auditedMesh) ping(t *testing.T, n int) {
	t.Helper()
	for range n {
		if err := apiCall(am.a, "POST", "/v1/send", map[string]any{"to": am.bID, "action": "ping:agent"}, new(bytes.Buffer)); err != nil {
			t.Fatal(err)
		}
	}
}

// auditSet returns bob's audit files that exist, oldest first.
func auditSet(t *testing.T, home string) []string {
	t.Helper()
	var files []string
	for i := auditLogKeep; i >= 1; i-- {
		p := fmt.Sprintf("%s.%d", filepath.Join(home, "audit.log"), i)
		if _, err := os.Stat(p); err == nil {
			files = append(files, p)
		}
	}
	return append(files, filepath.Join(home, "audit.log"))
}

// copySet copies files into a new directory, keeping their names, and
// returns the copies.
func copySet(t *testing.T, files []string) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// fileLines reads path as lines, each without its newline; a last line
// without a newline is kept as it is.
func fileLines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.SplitAfter(data, []byte("\n"))
	if len(ls[len(ls)-1]) == 0 {
		ls = ls[:len(ls)-1]
	}
	for i, l := range ls {
		ls[i] = bytes.TrimSuffix(l, []byte("\n"))
	}
	return ls
}

// writeLines writes lines to path, each with a newline.
func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// recordLines returns the indexes of lines that are records, not
// checkpoints.
func recordLines(lines [][]byte) []int {
	var is []int
	for i, l := range lines {
		if !bytes.Contains(l, []byte(`"kind":"checkpoint"`)) {
			is = append(is, i)
		}
	}
	return is
}

// rechain rewrites the prev of every line from index from on to the hash
// of the line before, as an attacker without the identity key can:
// checkpoints keep their signatures.
func rechain(t *testing.T, lines [][]byte, from int) {
	t.Helper()
	for i := max(from, 1); i < len(lines); i++ {
		l, err := parseChainLine(lines[i])
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = append(appendChainPrefix(nil, l.seq, hashLine(lines[i-1])), l.rest...)
	}
}

// verifyCLI runs `meshagent audit verify` with args.
func verifyCLI(t *testing.T, args ...string) result {
	t.Helper()
	return cli(t, append([]string{"audit", "verify"}, args...)...)
}

// wantFault runs verify on files and wants exit 1 with a one-line error
// that matches re.
func wantFault(t *testing.T, key string, files []string, re string) {
	t.Helper()
	r := verifyCLI(t, append([]string{"--key", key}, files...)...)
	if r.code != 1 || !regexp.MustCompile(re).MatchString(r.stderr) || strings.Contains(r.stderr, "\n") {
		t.Fatalf("verify: exit %d, want 1 and an error matching %q; stderr: %s\nstdout: %s", r.code, re, r.stderr, r.stdout)
	}
	t.Logf("verify: %s", r.stderr)
}

// A real daemon's audit log, across size rotations and a restart, holds
// as a chain; each kind of tampering is reported with the file, line and
// reason, and what the files cannot prove (an unsigned tail, a
// half-written line) is said, not fatal.
func TestAuditVerifyCatchesTampering(t *testing.T) {
	am := newAuditedMesh(t)
	am.ping(t, 40)
	am.stopBob()
	set := auditSet(t, am.b)
	if len(set) != auditLogKeep+1 {
		t.Fatalf("want a full rotation set, got %v", set)
	}
	key := am.bID

	r := verifyCLI(t, append([]string{"--key", key}, set...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "ok: seq") || !strings.Contains(r.stdout, "(shutdown)") || strings.Contains(r.stdout, "warning") {
		t.Fatalf("an untouched log: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := verifyCLI(t, append([]string{"--home", am.b, "--strict"}, set...)...); r.code != 0 {
		t.Fatalf("--home --strict on an untouched log: exit %d: %s", r.code, r.stderr)
	}
	t.Logf("untouched:\n%s", r.stdout)

	// The middle file, audit.log.2: records at lines 3, 4... of it.
	mid := 1 // index in set
	middle := func(t *testing.T) ([]string, [][]byte, []int) {
		files := copySet(t, set)
		lines := fileLines(t, files[mid])
		recs := recordLines(lines)
		if len(recs) < 4 {
			t.Fatalf("%d records in %s", len(recs), files[mid])
		}
		return files, lines, recs
	}
	name := filepath.Base(set[mid])

	t.Run("altered byte", func(t *testing.T) {
		files, lines, recs := middle(t)
		i := recs[1]
		lines[i] = bytes.Replace(lines[i], []byte(`"decision":"accept"`), []byte(`"decision":"reject"`), 1)
		writeLines(t, files[mid], lines)
		wantFault(t, key, files, fmt.Sprintf(`^meshagent: .*%s:%d: altered`, regexp.QuoteMeta(name), i+1))
	})
	t.Run("removed line", func(t *testing.T) {
		files, lines, recs := middle(t)
		i := recs[1]
		lines = append(lines[:i], lines[i+1:]...)
		writeLines(t, files[mid], lines)
		wantFault(t, key, files, fmt.Sprintf(`%s:%d: seq \d+ after \d+: 1 lines removed`, regexp.QuoteMeta(name), i+1))
	})
	t.Run("inserted line", func(t *testing.T) {
		// A line made up with the right seq and hash: the next one
		// gives it away.
		files, lines, recs := middle(t)
		i := recs[1]
		prev, _ := parseChainLine(lines[i])
		fake := append(appendChainPrefix(nil, prev.seq+1, hashLine(lines[i])), []byte(`,"kind":"request","decision":"accept"}`)...)
		lines = append(lines[:i+1], append([][]byte{fake}, lines[i+1:]...)...)
		writeLines(t, files[mid], lines)
		wantFault(t, key, files, fmt.Sprintf(`%s:%d: seq (\d+) after seq \d+: a line inserted`, regexp.QuoteMeta(name), i+3))
	})
	t.Run("swapped lines", func(t *testing.T) {
		files, lines, recs := middle(t)
		i := recs[1]
		if recs[2] != i+1 {
			i = recs[2]
		}
		lines[i], lines[i+1] = lines[i+1], lines[i]
		writeLines(t, files[mid], lines)
		wantFault(t, key, files, fmt.Sprintf(`%s:%d: .*lines out of order`, regexp.QuoteMeta(name), i+1))
	})
	t.Run("rewritten with hashes recomputed", func(t *testing.T) {
		// Without the key, the next checkpoint gives it away.
		files, lines, recs := middle(t)
		i := recs[1]
		lines[i] = bytes.Replace(lines[i], []byte(`"decision":"accept"`), []byte(`"decision":"reject"`), 1)
		rechain(t, lines, i+1)
		writeLines(t, files[mid], lines)
		next := i + 1
		for !bytes.Contains(lines[next], []byte(`"kind":"checkpoint"`)) {
			next++
		}
		wantFault(t, key, files[:mid+1], fmt.Sprintf(`%s:%d: checkpoint: bad signature`, regexp.QuoteMeta(name), next+1))
	})
	t.Run("forged checkpoint", func(t *testing.T) {
		// Signed by another key over the same head: refused as not the
		// daemon's.
		files, lines, _ := middle(t)
		other, err := trust.GenerateIdentity(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		i := len(lines) - 1 // a rotated file ends in a checkpoint
		l, err := parseChainLine(lines[i])
		if err != nil {
			t.Fatal(err)
		}
		var cp checkpointLine
		if err := json.Unmarshal(lines[i], &cp); err != nil || cp.Kind != kindCheckpoint {
			t.Fatalf("%s's last line: %s", name, lines[i])
		}
		lines[i] = appendCheckpoint(nil, other, l.seq, l.prev, cp.Time, cp.Why)
		writeLines(t, files[mid], lines)
		wantFault(t, key, files, fmt.Sprintf(`%s:%d: checkpoint: signed by %s, not by %s`, regexp.QuoteMeta(name), i+1, other.Public(), key))
		// And the untouched log, checked against the wrong key.
		wantFault(t, other.Public().String(), set, `:\d+: checkpoint: signed by .*, not by `)
	})
	t.Run("file missing from the middle of a rotation set", func(t *testing.T) {
		files := []string{set[0], set[2], set[3]}
		wantFault(t, key, files, fmt.Sprintf(`%s:1: seq \d+ after \d+ at the end of .*: \d+ lines missing between the two files`, regexp.QuoteMeta(filepath.Base(set[2]))))
	})
	t.Run("files out of order", func(t *testing.T) {
		wantFault(t, key, []string{set[1], set[0], set[2], set[3]}, `:1: seq \d+ after seq \d+`)
	})
	t.Run("truncated tail", func(t *testing.T) {
		// Cut after a checkpoint and the k records after it (k up to
		// 3): those are unsigned, and said to be.
		files := copySet(t, set)
		last, cut, k := len(files)-1, -1, 0
		var lines [][]byte
		for ; last >= 0 && cut < 0; last-- {
			lines = fileLines(t, files[last])
			for i := len(lines) - 2; i >= 0 && cut < 0; i-- {
				if bytes.Contains(lines[i], []byte(`"kind":"checkpoint"`)) {
					k = len(recordLines(lines[i+1 : min(i+4, len(lines))]))
					if k > 0 && len(recordLines(lines[i+1:i+1+k])) == k {
						cut = i
					}
				}
			}
		}
		last++
		if cut < 0 {
			t.Fatal("no checkpoint with a record after it")
		}
		files = files[:last+1]
		writeLines(t, files[last], lines[:cut+1+k])
		r := verifyCLI(t, append([]string{"--key", key}, files...)...)
		want := fmt.Sprintf("warning: %d lines after the last checkpoint (from %s:%d) are not signed", k, files[last], cut+2)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("exit %d, want 0 and %q:\n%s%s", r.code, want, r.stdout, r.stderr)
		}
		t.Logf("%s", r.stdout)
		if r := verifyCLI(t, append([]string{"--key", key, "--strict"}, files...)...); r.code != 1 || !strings.Contains(r.stderr, "not signed") {
			t.Fatalf("--strict: exit %d: %s", r.code, r.stderr)
		}
		// Cut right after a periodic checkpoint: no unsigned line, but
		// no shutdown checkpoint either.
		writeLines(t, files[last], lines[:cut+1])
		r = verifyCLI(t, append([]string{"--key", key}, files...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "not the daemon's shutdown checkpoint") {
			t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("half-written last line", func(t *testing.T) {
		files := copySet(t, set)
		last := len(files) - 1
		data, _ := os.ReadFile(files[last])
		data = append(data, `{"seq":999,"prev":"00`...) // part of a line, no newline
		if err := os.WriteFile(files[last], data, 0o600); err != nil {
			t.Fatal(err)
		}
		r := verifyCLI(t, append([]string{"--key", key}, files...)...)
		if r.code != 0 || !strings.Contains(r.stdout, "a half-written last line") || !strings.Contains(r.stdout, "ok: seq") {
			t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
}

// A crash loses at most the line being written: a daemon that restarts on
// a log that ends in half a line (and no shutdown checkpoint) moves that
// file aside and goes on with the chain from its last whole line, and the
// whole set verifies, saying what happened.
func TestAuditChainContinuesAfterACrash(t *testing.T) {
	am := newAuditedMesh(t)
	am.ping(t, 5)
	am.stopBob()
	path := filepath.Join(am.b, "audit.log")
	lines := fileLines(t, path)
	// What a crash leaves: no shutdown checkpoint, half a line.
	lines = lines[:len(lines)-1]
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	b.Write(lines[len(lines)-1][:40])
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	am.restartBob(t, 1<<20)
	am.ping(t, 3)
	am.stopBob()
	set := auditSet(t, am.b)
	r := verifyCLI(t, append([]string{"--key", am.bID}, set...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "a half-written last line (40 bytes") ||
		!strings.Contains(r.stdout, "the daemon restarted without a shutdown checkpoint") || !strings.Contains(r.stdout, "(shutdown)") {
		t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("after a crash:\n%s", r.stdout)
}

// SIGHUP reopens the audit log (logrotate's create mode): the moved file
// ends in a checkpoint and the chain goes on in the new one, which starts
// with one.
func TestAuditLogReopensOnSIGHUP(t *testing.T) {
	am := newAuditedMesh(t)
	am.stopBob()
	am.restartBob(t, 1<<20)
	am.ping(t, 3)
	path := filepath.Join(am.b, "audit.log")
	moved := filepath.Join(t.TempDir(), "audit.log-rotated")
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		_, err := os.Stat(path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	am.ping(t, 3)
	am.stopBob()
	old := fileLines(t, moved)
	if !bytes.Contains(old[len(old)-1], []byte(`"kind":"checkpoint"`)) { // reopen, or interval just before
		t.Fatalf("the moved file ends in %s", old[len(old)-1])
	}
	set := auditSet(t, am.b)
	files := append(set[:len(set)-1:len(set)-1], moved, path)
	r := verifyCLI(t, append([]string{"--key", am.bID, "--strict"}, files...)...)
	if r.code != 0 {
		t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	nl := fileLines(t, path)
	if !bytes.Contains(nl[0], []byte(`"why":"reopen"`)) || len(recordLines(nl)) < 3 {
		t.Fatalf("the new file: %d records, starting with %s", len(recordLines(nl)), nl[0])
	}
}

// A record is in the file before the reply it audits leaves: once
// /v1/send returns, the callee's line and the caller's are there, read
// at once, without waiting.
func TestAuditLineWrittenBeforeTheReply(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "ping:agent", "", nil) // 64 MiB files: no rotation
	admitted(t, a, bID, 15*time.Second)
	for range 20 {
		var out bytes.Buffer
		if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "ping:agent"}, &out); err != nil {
			t.Fatal(err)
		}
		var rep struct {
			CorrelationID string `json:"correlation_id"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil || rep.CorrelationID == "" {
			t.Fatalf("reply %s: %v", out.String(), err)
		}
		for _, home := range []string{b, a} {
			data, err := os.ReadFile(filepath.Join(home, "audit.log"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(`"correlation_id":"`+rep.CorrelationID+`"`)) {
				t.Fatalf("%s's audit log has no line of call %s when its reply arrived", filepath.Base(home), rep.CorrelationID)
			}
		}
	}
}
