//go:build meshsim

package simulations_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// BenchmarkRegistry runs, for each N, a cold start of N real nodes over
// TCP+TLS on loopback (ring plus one random chord per node) and measures:
// registry convergence; liveness traffic per node in steady state; false
// dead verdicts under 10 % message loss; detection of a tenth of the nodes
// crashing at once; and how long a revocation takes to reach every node.
// The heartbeat is scaled with N (N × 10 ms) so that the 2-core machine
// keeps up with every node verifying every heartbeat; times are reported in
// heartbeat intervals as well. Run with -benchtime 1x.
func BenchmarkRegistry(b *testing.B) {
	for _, n := range []int{10, 50, 100, 200} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				registryScenario(b, n)
			}
		})
	}
}

func registryScenario(b *testing.B, n int) {
	r, err := simulations.RegistryScenario(context.Background(), n, time.Duration(n)*10*time.Millisecond, 0.10, 7)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(r.Connect.Milliseconds()), "connect_ms")
	b.ReportMetric(float64(r.Converge.Milliseconds()), "converge_ms")
	b.ReportMetric((r.Connect+r.Converge).Seconds()/r.Heartbeat.Seconds(), "cold_start_hb")
	b.ReportMetric(r.BytesPerNodePerHB, "bytes_in_per_node_per_hb")
	b.ReportMetric(r.KbitPerNodeAt30s(), "kbit_s_per_node_at_30s_hb")
	b.ReportMetric(float64(r.FalseDead), "false_dead_10pct_loss")
	b.ReportMetric(simulations.Percentile(r.DetectHB, 0.5), "detect_p50_hb")
	b.ReportMetric(simulations.Percentile(r.DetectHB, 0.99), "detect_p99_hb")
	b.ReportMetric(float64(r.DetectSpread.Milliseconds()), "detect_spread_ms")
	b.ReportMetric(float64(r.Revocation.Microseconds())/1000, "revocation_all_ms")
}
