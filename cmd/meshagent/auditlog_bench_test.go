//go:build unix

package main

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// auditCPUTime is the process's user and system CPU time so far.
func auditCPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per op since start: on a
// loaded machine, ns/op counts the time the benchmark waited for a core.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(auditCPUTime()-start)/float64(b.N), "cpu-ns/op")
}

// benchRecord is a typical audit line of an accepted call, as the node
// encodes it (329 bytes).
const benchRecord = `{"time":"2026-11-30T03:12:45.123456789Z","correlation_id":"3f2a9c0b8d7e4f1a","direction":"in","kind":"request",` +
	`"sender":"12D3KooWJN9eMWqxaoch8Fh7wtvxizsW9m6hwMU7bUnHGnpUXe8D","recipient":"12D3KooWMWzrsgmFrsM936dVuFrRrJk46VBcFBiaNLCPT9zvJvTq",` +
	`"action":"ping:agent","decision":"accept","latency_ms":0.412}` + "\n"

// BenchmarkAuditLine is the cost of one audit line in the daemon's file:
// plain, one write(2) of the record as before the chain; chain, the
// record with its seq and prev hash (and every 1000th with a signed
// checkpoint in the same write). Both write to a file on the same disk,
// both before Write returns; -parallel variants from 8 goroutines.
// cpu-ns/op is the process's CPU time per line (ns/op waits for a core
// on a loaded machine).
//
//	go test ./cmd/meshagent -run '^$' -bench BenchmarkAuditLine -benchtime 200000x -count 6
func BenchmarkAuditLine(b *testing.B) {
	line := []byte(benchRecord)
	plain := func(b *testing.B) io.WriteCloser {
		f, err := os.OpenFile(filepath.Join(b.TempDir(), "audit.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		return f
	}
	chain := func(b *testing.B) io.WriteCloser {
		opts := testChainOptions(1<<40, io.Discard)
		opts.lines = defaultCheckpointLines
		c, err := openAuditChain(filepath.Join(b.TempDir(), "audit.log"), opts)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	for _, w := range []struct {
		name string
		open func(*testing.B) io.WriteCloser
	}{{"plain", plain}, {"chain", chain}} {
		b.Run(w.name, func(b *testing.B) {
			f := w.open(b)
			defer f.Close()
			b.SetBytes(int64(len(line)))
			start := auditCPUTime()
			for b.Loop() {
				if _, err := f.Write(line); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, start)
		})
		b.Run(w.name+"-parallel", func(b *testing.B) {
			f := w.open(b)
			defer f.Close()
			b.SetParallelism(4) // 8 goroutines on 2 cores
			start := auditCPUTime()
			defer reportCPU(b, start)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := f.Write(line); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
