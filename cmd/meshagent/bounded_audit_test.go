//go:build meshsim

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshagent/meshagent/node"
)

// auditFiles reads the audit log at path and its rotated files, oldest
// first, and checks each: mode 0600, at most max bytes (or one record
// line and checkpoints), every line JSON. It returns the lines.
func auditFiles(t *testing.T, path string, max int64) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for i := auditLogKeep; i >= 0; i-- {
		p := path
		if i > 0 {
			p = fmt.Sprintf("%s.%d", path, i)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(p), err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// Records: checkpoints aside (the chain's, a few per file).
		n := bytes.Count(data, []byte("\n")) - bytes.Count(data, []byte(`"kind":"checkpoint"`))
		if st.Mode().Perm() != 0o600 || (int64(len(data)) > max && n > 1) || !bytes.HasSuffix(data, []byte("\n")) {
			t.Fatalf("%s: mode %04o, %d bytes in %d lines (bound %d)", filepath.Base(p), st.Mode().Perm(), len(data), n, max)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var l map[string]any
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%s: a broken line %q", filepath.Base(p), sc.Text())
			}
			lines = append(lines, l)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("%s.%d", path, auditLogKeep+1)); err == nil {
		t.Fatalf("more than %d old audit files", auditLogKeep)
	}
	return lines
}

// The audit log is rotated by size through the daemon's config: calls
// that write across several rotations leave exactly auditLogKeep old
// files, each within the bound, and the lines kept are the latest, none
// missing and none broken.
func TestBoundedAuditLogRotation(t *testing.T) {
	const max = 8 << 10
	_, a, b, _, bID := twoDaemons(t, "ping:agent", "ping:agent", func(name string, fc *fileConfig) {
		if name == "bob" {
			fc.AuditLogMaxBytes = max
		}
	})
	path := filepath.Join(b, "audit.log")
	var ids []string // of the calls made, in order
	ping := func() {
		t.Helper()
		var out bytes.Buffer
		if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "ping:agent"}, &out); err != nil {
			t.Fatal(err)
		}
		var rep struct {
			CorrelationID string `json:"correlation_id"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rep.CorrelationID)
	}
	// bob's lines of the calls, in order.
	called := func(lines []map[string]any) []string {
		var got []string
		for _, l := range lines {
			if l["direction"] == "in" && l["action"] == "ping:agent" && l["decision"] == "accept" {
				got = append(got, l["correlation_id"].(string))
			}
		}
		return got
	}
	rotations := 0
	prev, _ := os.Stat(path)
	for rotations < 2*auditLogKeep {
		if len(ids) > 1000 {
			t.Fatalf("%d rotations after %d calls", rotations, len(ids))
		}
		ping()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if os.SameFile(prev, st) {
			continue
		}
		rotations++
		prev = st
		if rotations == 1 {
			// Across the first rotation: every call's line is there once.
			if _, err := os.Stat(path + ".2"); err == nil {
				t.Fatal("two rotations in one call")
			}
			if got := called(readAll(t, path)); !slices.Equal(got, ids) {
				t.Fatalf("after the first rotation: %d of %d calls' lines", len(got), len(ids))
			}
		}
	}
	got := called(auditFiles(t, path, max))
	if len(got) == 0 || !slices.Equal(got, ids[len(ids)-len(got):]) {
		t.Fatalf("kept lines of %d calls, not the latest of %d in order", len(got), len(ids))
	}
	t.Logf("%d calls, %d rotations: the %d latest calls' lines kept in %d files of at most %d bytes", len(ids), rotations, len(got), auditLogKeep+1, max)
}

// readAll returns the lines of the audit log at path and its rotated
// files, oldest first, of those that exist.
func readAll(t *testing.T, path string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for i := auditLogKeep + 1; i >= 0; i-- {
		p := path
		if i > 0 {
			p = fmt.Sprintf("%s.%d", path, i)
		}
		data, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
			var l map[string]any
			if s != "" && json.Unmarshal([]byte(s), &l) == nil {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// A line longer than the bound is written whole, alone in its file; lines
// are never split; the oldest files beyond auditLogKeep are removed.
func TestBoundedRotatingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	const max = 1000
	var logw bytes.Buffer
	r, err := openAuditChain(path, testChainOptions(max, &logw))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		line := fmt.Sprintf(`{"n":%d,"pad":%q}`+"\n", i, strings.Repeat("x", 20))
		if i == 37 {
			line = fmt.Sprintf(`{"n":%d,"pad":%q}`+"\n", i, strings.Repeat("x", 3000))
		}
		if _, err := r.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil || logw.Len() != 0 {
		t.Fatalf("close: %v; log: %s", err, logw.String())
	}
	lines := auditFiles(t, path, max)
	var ns []int
	for _, l := range lines {
		if l["kind"] != kindCheckpoint {
			ns = append(ns, int(l["n"].(float64)))
		}
	}
	for i := 1; i < len(ns); i++ {
		if ns[i] != ns[i-1]+1 {
			t.Fatalf("lines kept: %v", ns)
		}
	}
	if ns[len(ns)-1] != 39 || !slices.Contains(ns, 37) {
		t.Fatalf("lines kept: %v", ns)
	}
}

// A negative audit_log_max_bytes is refused before anything starts.
func TestBoundedAuditLogConfig(t *testing.T) {
	_, anchor, a, _ := enrolled(t)
	fc := daemonConfig("alice", anchor)
	fc.AuditLogMaxBytes = -1
	err := serveDaemon(t.Context(), a, fc, func(*node.Node) { t.Error("the daemon started") }, daemonLog(t, a))
	if err == nil || !strings.Contains(err.Error(), "audit_log_max_bytes") {
		t.Fatalf("want a refusal naming audit_log_max_bytes, got %v", err)
	}
}
