//go:build meshsim

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
)

// TestBenchSendAudit: /v1/send of ping:agent between four daemon pairs,
// in the same run, call by call in turn (each pair first in turn): one
// without an audit log, one writing each record with one plain write(2)
// as the daemon did before the hash chain, one writing the hash-chained
// log, and one that encodes each record and drops it (no syscall); all
// but the first on both sides. It reports
// the p50, p99 and mean of each, their ratios, and the audit lines each
// call added per side.
//
//	MESHAGENT_BENCH_CALLS=3000 go test -tags meshsim -count=1 -v -run '^TestBenchSendAudit$' ./cmd/meshagent/
func TestBenchSendAudit(t *testing.T) {
	calls := benchCalls(t)
	_, a0, _, _, b0 := twoDaemons(t, "ping:agent", "", func(_ string, fc *fileConfig) { fc.AuditLog = "" })
	// The plain pair: the node writes to an O_APPEND file of its own.
	testHookNodeConfig = func(cfg *node.Config) {
		f, err := os.OpenFile(filepath.Join(t.TempDir(), "plain.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		cfg.Audit = f
	}
	_, a1, _, _, b1 := twoDaemons(t, "ping:agent", "", nil)
	// The encoded pair: records encoded, then dropped (no syscall).
	testHookNodeConfig = func(cfg *node.Config) { cfg.Audit = dropWriter{} }
	_, a3, _, _, b3 := twoDaemons(t, "ping:agent", "", nil)
	testHookNodeConfig = nil
	_, a2, b2home, _, b2 := twoDaemons(t, "ping:agent", "", nil)
	for _, p := range [][2]string{{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}} {
		admitted(t, p[0], p[1], 15*time.Second)
	}
	send := func(home, to string) func() error {
		c, err := newLocalClient(home)
		if err != nil {
			t.Fatal(err)
		}
		req := map[string]any{"to": to, "action": "ping:agent"}
		return func() error { return c.call(context.Background(), "POST", "/v1/send", req, io.Discard) }
	}
	pairs := []func() error{send(a0, b0), send(a1, b1), send(a2, b2), send(a3, b3)}
	names := []string{"no audit", "plain line", "chained line", "encoded, not written"}
	for range 50 {
		for _, f := range pairs {
			_ = f()
		}
	}
	lines := func(home string) int {
		data, _ := os.ReadFile(filepath.Join(home, "audit.log"))
		return bytes.Count(data, []byte("\n"))
	}
	la, lb := lines(a2), lines(b2home)
	d := make([][]time.Duration, len(pairs))
	sum := make([]time.Duration, len(pairs))
	for i := range calls {
		for j := range pairs {
			k := (i + j) % len(pairs)
			s := time.Now()
			if err := pairs[k](); err != nil {
				t.Fatal(err)
			}
			e := time.Since(s)
			d[k], sum[k] = append(d[k], e), sum[k]+e
		}
	}
	perCall := float64(lines(a2)-la+lines(b2home)-lb) / float64(2*calls)
	var out strings.Builder
	p50 := make([]time.Duration, len(pairs))
	for k := range pairs {
		var p99 time.Duration
		p50[k], p99 = percentiles(d[k])
		fmt.Fprintf(&out, "%s p50 %.0f µs p99 %.0f µs mean %.0f µs; ", names[k], us(p50[k]), us(p99), us(sum[k]/time.Duration(calls)))
	}
	t.Logf("/v1/send ping, %d calls each: %sp50 ratios: plain/none %.3f, chained/none %.3f, chained/plain %.3f, encoded/none %.3f; mean ratios: plain/none %.3f, chained/none %.3f, chained/plain %.3f, encoded/none %.3f; %.4f chained lines per call per side",
		calls, out.String(), float64(p50[1])/float64(p50[0]), float64(p50[2])/float64(p50[0]), float64(p50[2])/float64(p50[1]), float64(p50[3])/float64(p50[0]),
		float64(sum[1])/float64(sum[0]), float64(sum[2])/float64(sum[0]), float64(sum[2])/float64(sum[1]), float64(sum[3])/float64(sum[0]), perCall)
}

// dropWriter takes every write and keeps nothing; unlike io.Discard, the
// node's audit log still encodes each record for it.
type dropWriter struct{}

func (dropWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestBenchSendAuditConcurrent: 8 callers at once, /v1/send of
// ping:agent, through a pair writing each record with one plain
// write(2) and a pair writing the chained log, in alternating phases of
// the same run. It reports calls a second of each.
//
//	MESHAGENT_BENCH_CALLS=4000 go test -tags meshsim -count=1 -v -run '^TestBenchSendAuditConcurrent$' ./cmd/meshagent/
func TestBenchSendAuditConcurrent(t *testing.T) {
	calls := benchCalls(t)
	testHookNodeConfig = func(cfg *node.Config) {
		f, err := os.OpenFile(filepath.Join(t.TempDir(), "plain.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		cfg.Audit = f
	}
	_, a0, _, _, b0 := twoDaemons(t, "ping:agent", "", nil)
	testHookNodeConfig = nil
	_, a1, _, _, b1 := twoDaemons(t, "ping:agent", "", nil)
	admitted(t, a0, b0, 15*time.Second)
	admitted(t, a1, b1, 15*time.Second)
	phase := func(home, to string, n int) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := newLocalClient(home)
				if err != nil {
					t.Error(err)
					return
				}
				req := map[string]any{"to": to, "action": "ping:agent"}
				for range n / 8 {
					if err := c.call(context.Background(), "POST", "/v1/send", req, io.Discard); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	phase(a0, b0, 400)
	phase(a1, b1, 400)
	var plain, chained time.Duration
	const rounds = 4
	for range rounds {
		plain += phase(a0, b0, calls/rounds)
		chained += phase(a1, b1, calls/rounds)
	}
	n := float64(calls / rounds / 8 * 8 * rounds)
	t.Logf("8 callers, %.0f calls each: plain line %.0f calls/s, chained line %.0f calls/s, chained/plain %.3f",
		n, n/plain.Seconds(), n/chained.Seconds(), plain.Seconds()/chained.Seconds())
}
