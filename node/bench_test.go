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
	for i := 0; i < 20; i++ { // warm up (the call's stream goes to the pool)
		plain()
		secure()
	}
	// Alternating call by call: both see the same load.
	pl, sl := make([]time.Duration, b.N), make([]time.Duration, b.N)
	var ptotal, stotal time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		plain()
		t1 := time.Now()
		secure()
		pl[i], sl[i] = t1.Sub(t0), time.Since(t1)
		ptotal += pl[i]
		stotal += sl[i]
	}
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
	run := func(f func() error, calls int) time.Duration {
		var wg sync.WaitGroup
		var failed atomic.Int32
		per := calls/workers + 1
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
		return time.Since(start) / time.Duration(per*workers)
	}
	// CPU per call of each (both ends, getrusage): what the throughput
	// ratio would be on a machine that runs nothing else.
	var pcpu, scpu time.Duration
	timed := func(f func() error, calls int, wall, cpu *time.Duration) {
		c0 := cpuTime()
		*wall += run(f, calls)
		*cpu += (cpuTime() - c0) / time.Duration(calls/workers*workers+workers)
	}
	run(plain, 8*workers) // warm up: 8 streams in the pool
	run(secure, 8*workers)
	// Eight rounds of each, alternating which goes first: both see the
	// same load.
	const rounds = 8
	var ptime, stime time.Duration
	b.ResetTimer()
	for r := range rounds {
		if r%2 == 0 {
			timed(plain, b.N/rounds+1, &ptime, &pcpu)
			timed(secure, b.N/rounds+1, &stime, &scpu)
		} else {
			timed(secure, b.N/rounds+1, &stime, &scpu)
			timed(plain, b.N/rounds+1, &ptime, &pcpu)
		}
	}
	b.StopTimer()
	pcps, scps := rounds/ptime.Seconds(), rounds/stime.Seconds()
	b.ReportMetric(float64(pcpu.Microseconds())/rounds, "plain_cpu_us/call")
	b.ReportMetric(float64(scpu.Microseconds())/rounds, "mesh_cpu_us/call")
	b.ReportMetric(float64(pcpu)/float64(scpu), "cpu_throughput_ratio")
	b.ReportMetric(pcps, "plain_calls/s")
	b.ReportMetric(scps, "mesh_calls/s")
	b.ReportMetric(scps/pcps, "throughput_ratio")
}

// BenchmarkCallCPU: b.N sequential calls alone (no baseline), for a CPU
// profile (-cpuprofile) of the call path; cpu_us/call is the process's
// CPU time, both ends, per call.
func BenchmarkCallCPU(b *testing.B) {
	m, _ := testMesh(b, "tcp")
	ctx := context.Background()
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	body := make([]byte, 100)
	for range 20 {
		if _, err := orch.Node.Call(ctx, worker.ID(), "read:logs", body, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	c0 := cpuTime()
	for range b.N {
		if _, err := orch.Node.Call(ctx, worker.ID(), "read:logs", body, nil); err != nil {
			b.Fatal(err)
		}
	}
	cpu := cpuTime() - c0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/call")
}
