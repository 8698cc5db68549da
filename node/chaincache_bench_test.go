//go:build meshsim

package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// BenchmarkCallCPUDepth makes b.N sequential calls from mallory to worker's
// read:logs with a chain of the given depth (orchestrator's link, then
// links mallory delegates to herself) and reports the CPU time of the
// whole process per call (both ends: four signature operations, the
// decisions, the chain and token checks, streams, audit) and the p50.
// CPU per call does not depend on what else the machine runs, as wall
// times do.
//
// go test -tags meshsim ./node -run '^$' -bench CallCPUDepth -benchtime 2000x
func BenchmarkCallCPUDepth(b *testing.B) {
	for _, depth := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			m, _ := testMesh(b, "tcp")
			ctx := context.Background()
			mallory, worker := m.Agents["mallory"], m.Agents["worker"]
			g := trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: time.Now().Add(time.Hour)}
			tok, err := m.Agents["orchestrator"].Node.Delegate(nil, mallory.Identity.Public(), g)
			if err != nil {
				b.Fatal(err)
			}
			for len(tok.Links) < depth {
				if tok, err = tok.Delegate(mallory.Identity, mallory.Identity.Public(), g, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			var opts *node.CallOptions
			if depth == 1 { // the orchestrator's own token, chosen by Call
				mallory = m.Agents["orchestrator"]
			} else {
				opts = &node.CallOptions{Token: tok}
			}
			body := make([]byte, 100)
			for i := 0; i < 20; i++ {
				if _, err := mallory.Node.Call(ctx, worker.ID(), "read:logs", body, opts); err != nil {
					b.Fatal(err)
				}
			}
			lat := make([]time.Duration, b.N)
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := range lat {
				t0 := time.Now()
				if _, err := mallory.Node.Call(ctx, worker.ID(), "read:logs", body, opts); err != nil {
					b.Fatal(err)
				}
				lat[i] = time.Since(t0)
			}
			cpu := cpuTime() - cpu0
			b.StopTimer()
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/call")
			b.ReportMetric(percentile(lat, 0.5), "p50_us")
		})
	}
}
