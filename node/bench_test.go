//go:build meshsim

package node_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/simulations"
)

// percentile is the p-th percentile of d in microseconds.
func percentile(d []time.Duration, p float64) float64 {
	return float64(simulations.Percentile(d, p).Microseconds())
}

// servePlain is the baseline: a request/response over a libp2p stream with
// the same varint framing as meshagent's RPC, and no checks.
func servePlain(h host.Host) {
	h.SetStreamHandler("/bench/plain/1.0.0", func(s network.Stream) {
		r, err := msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
		if err != nil {
			s.Reset()
			return
		}
		_ = msgio.NewVarintWriter(s).WriteMsg(append([]byte("logs for "), r...))
		s.Close()
	})
}

// BenchmarkRPC measures a meshagent call (signed request with a depth-1
// chain, full decision function, signed reply, audit) against a plain
// libp2p stream request/response with the same framing and no checks,
// between the same two hosts over TCP+TLS on loopback, in the same run.
// b.N sequential calls of each; p50/p99 in microseconds and the ratios.
func BenchmarkRPC(b *testing.B) {
	m, _ := testMesh(b, "tcp")
	ctx := context.Background()
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	body := make([]byte, 100)
	servePlain(worker.Node.Host())
	plain := func() {
		s, err := orch.Node.Host().NewStream(ctx, worker.ID(), "/bench/plain/1.0.0")
		if err != nil {
			b.Fatal(err)
		}
		_ = msgio.NewVarintWriter(s).WriteMsg(body)
		s.CloseWrite()
		if _, err := msgio.NewVarintReaderSize(s, 1<<20).ReadMsg(); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	secure := func() {
		if _, err := orch.Node.Call(ctx, worker.ID(), "read:logs", body, nil); err != nil {
			b.Fatal(err)
		}
	}
	run := func(f func()) ([]time.Duration, time.Duration) {
		for i := 0; i < 20; i++ { // warm up
			f()
		}
		lat := make([]time.Duration, b.N)
		start := time.Now()
		for i := range lat {
			t0 := time.Now()
			f()
			lat[i] = time.Since(t0)
		}
		return lat, time.Since(start)
	}
	b.ResetTimer()
	pl, ptotal := run(plain)
	sl, stotal := run(secure)
	b.StopTimer()
	b.ReportMetric(percentile(pl, 0.5), "plain_p50_us")
	b.ReportMetric(percentile(pl, 0.99), "plain_p99_us")
	b.ReportMetric(percentile(sl, 0.5), "mesh_p50_us")
	b.ReportMetric(percentile(sl, 0.99), "mesh_p99_us")
	pcps := float64(b.N) / ptotal.Seconds()
	scps := float64(b.N) / stotal.Seconds()
	b.ReportMetric(pcps, "plain_calls/s")
	b.ReportMetric(scps, "mesh_calls/s")
	b.ReportMetric(percentile(sl, 0.5)/percentile(pl, 0.5), "p50_ratio")
	b.ReportMetric(scps/pcps, "throughput_ratio")
}

// BenchmarkRPCParallel is BenchmarkRPC with 8 concurrent callers: calls per
// second when both ends are CPU-bound, meshagent against plain streams.
func BenchmarkRPCParallel(b *testing.B) {
	m, _ := testMesh(b, "tcp")
	ctx := context.Background()
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	body := make([]byte, 100)
	servePlain(worker.Node.Host())
	plain := func() error {
		s, err := orch.Node.Host().NewStream(ctx, worker.ID(), "/bench/plain/1.0.0")
		if err != nil {
			return err
		}
		_ = msgio.NewVarintWriter(s).WriteMsg(body)
		s.CloseWrite()
		_, err = msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
		s.Close()
		return err
	}
	secure := func() error {
		_, err := orch.Node.Call(ctx, worker.ID(), "read:logs", body, nil)
		return err
	}
	const workers = 8
	run := func(f func() error) float64 {
		var wg sync.WaitGroup
		var failed atomic.Int32
		per := b.N/workers + 1
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					if f() != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			b.Fatalf("%d calls failed", failed.Load())
		}
		return float64(per*workers) / time.Since(start).Seconds()
	}
	b.ResetTimer()
	pcps := run(plain)
	scps := run(secure)
	b.StopTimer()
	b.ReportMetric(pcps, "plain_calls/s")
	b.ReportMetric(scps, "mesh_calls/s")
	b.ReportMetric(scps/pcps, "throughput_ratio")
}
