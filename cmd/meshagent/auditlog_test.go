package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// testChainOptions are the audit chain options of a test: max bytes a
// file, a fresh identity, checkpoints every 5 lines (or 10 s).
func testChainOptions(max int64, logw io.Writer) chainOptions {
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		panic(err)
	}
	return chainOptions{max: max, keep: auditLogKeep, id: id, every: 10 * time.Second, lines: 5, logw: logw}
}

// writeRecords writes n record lines to c.
func writeRecords(t *testing.T, c *auditChain, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := fmt.Fprintf(c, `{"kind":"request","n":%d}`+"\n", i); err != nil {
			t.Fatal(err)
		}
	}
}

// whys returns the why of every checkpoint in the file at path, and the
// number of records.
func whys(t *testing.T, path string) (ws []string, records int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if _, w, ok := strings.Cut(l, `"kind":"checkpoint","why":"`); ok {
			ws = append(ws, w[:strings.IndexByte(w, '"')])
		} else {
			records++
		}
	}
	return ws, records
}

// The writer signs a checkpoint at start, every `lines` lines (in the
// same write as the line) and at shutdown; a restart goes on with the
// chain, and the whole verifies.
func TestAuditChainCheckpointsAndRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	var logw bytes.Buffer
	opts := testChainOptions(1<<20, &logw)
	opts.lines = 3
	c, err := openAuditChain(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, c, 0, 7)
	if err := c.Close(); err != nil || c.Close() != nil {
		t.Fatalf("close: %v", err)
	}
	// start, after records 3 and 6 (the 5th line is the 3rd since the
	// start checkpoint), shutdown.
	if ws, n := whys(t, path); strings.Join(ws, " ") != "start interval interval shutdown" || n != 7 {
		t.Fatalf("checkpoints %v, %d records", ws, n)
	}
	if c, err = openAuditChain(path, opts); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, c, 7, 1)
	c.Close()
	rep, err := verifyAuditFiles(opts.id.Public(), []string{path})
	if err != nil || len(rep.warnings)+len(rep.notes) != 0 || rep.lines != 14 || rep.first.seq != 0 || rep.last.seq != 13 || rep.checkpoints != 6 {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	if logw.Len() != 0 {
		t.Fatalf("said: %s", logw.String())
	}
}

// While lines come, a checkpoint follows within `every`; an idle log gets
// none.
func TestAuditChainIntervalCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	opts := testChainOptions(1<<20, io.Discard)
	opts.every, opts.lines = 20*time.Millisecond, 1000
	c, err := openAuditChain(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeRecords(t, c, 0, 1)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ws, _ := whys(t, path)
		if len(ws) == 2 && ws[1] == whyInterval {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoints: %v", ws)
		}
	}
	time.Sleep(100 * time.Millisecond) // idle: nothing more to sign
	if ws, _ := whys(t, path); len(ws) != 2 {
		t.Fatalf("checkpoints of an idle log: %v", ws)
	}
}

// A file that does not end in a chain line (an older version's) is moved
// aside untouched and a new chain starts; so is one that ends in half a
// line, but the chain goes on from its last whole line.
func TestAuditChainOpensWhatItFinds(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	old := `{"time":"2026-01-01T00:00:00Z","kind":"request"}` + "\n"
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	var logw bytes.Buffer
	opts := testChainOptions(1<<20, &logw)
	c, err := openAuditChain(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	writeRecords(t, c, 0, 2)
	c.Close()
	if data, _ := os.ReadFile(path + ".1"); string(data) != old || !strings.Contains(logw.String(), "a new chain starts") {
		t.Fatalf("moved: %q; said %s", data, logw.String())
	}
	if rep, err := verifyAuditFiles(opts.id.Public(), []string{path}); err != nil || rep.first.seq != 0 {
		t.Fatalf("verify: %v", err)
	}
	// Half a line at the end.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":5,"prev":"ab`)
	f.Close()
	logw.Reset()
	if c, err = openAuditChain(path, opts); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, c, 2, 1)
	c.Close()
	rep, err := verifyAuditFiles(opts.id.Public(), []string{path + ".1", path})
	if err != nil || !strings.Contains(logw.String(), "half-written") || len(rep.warnings) != 1 || !strings.Contains(rep.warnings[0], "half-written") {
		t.Fatalf("verify: %v %+v; said %s", err, rep, logw.String())
	}
	if _, err := verifyAuditFiles(opts.id.Public(), []string{path + ".2", path + ".1", path}); err == nil {
		t.Fatal("the older version's file verified")
	}
}

// Write takes one JSON object on one line, as the node encodes records,
// and nothing else.
func TestAuditChainRefusesOtherWrites(t *testing.T) {
	c, err := openAuditChain(filepath.Join(t.TempDir(), "audit.log"), testChainOptions(1<<20, io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range []string{"", "\n", "{}", "[1]\n", "{\"a\":1}\n{\"b\":2}\n", "{\"a\":\n1}\n", "x{}\n", "{ }\n", "{not json}\n"} {
		if _, err := c.Write([]byte(p)); err == nil {
			t.Errorf("wrote %q", p)
		}
	}
	if _, err := c.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
}

// parseChainLine reads exactly what the writer writes: the prefix it
// parses, written again, is the line.
func FuzzParseAuditLine(f *testing.F) {
	f.Add([]byte(`{"seq":0,"prev":"0000000000000000000000000000000000000000000000000000000000000000"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		l, err := parseChainLine(line)
		if err != nil {
			return
		}
		again := append(appendChainPrefix(nil, l.seq, l.prev), l.rest...)
		if !bytes.Equal(again, line) {
			t.Fatalf("parsed %q as seq %d prev %x, which writes %q", line, l.seq, l.prev, again)
		}
	})
}

// verifyAuditFiles takes any bytes without a panic, and what it accepts
// is a chain: every line parses.
func FuzzVerifyAuditFile(f *testing.F) {
	path := filepath.Join(f.TempDir(), "audit.log")
	opts := testChainOptions(1<<20, io.Discard)
	opts.lines = 2
	c, err := openAuditChain(path, opts)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		fmt.Fprintf(c, `{"kind":"request","n":%d}`+"\n", i)
	}
	c.Close()
	seed, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-20])
	f.Add(bytes.Replace(seed, []byte("\n"), []byte("\n\n"), 1))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.log")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := verifyAuditFiles(opts.id.Public(), []string{p})
		if err != nil {
			return
		}
		whole := data[:bytes.LastIndexByte(data, '\n')+1]
		for _, l := range bytes.SplitAfter(whole, []byte("\n")) {
			if len(l) == 0 {
				continue
			}
			if _, err := parseChainLine(l[:len(l)-1]); err != nil {
				t.Fatalf("verified a file with the line %q: %+v", l, rep)
			}
		}
	})
}
