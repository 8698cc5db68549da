//go:build meshsim

package simulations

import (
	"context"
	"sync"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// LoadResult is what honest callers achieved over a period.
type LoadResult struct {
	Calls     int // ended within the window (Failures among them)
	Failures  int
	Late      int // still in flight when the window ended
	Elapsed   time.Duration
	Latencies []time.Duration
	Errors    map[trust.Code]int // failures by code
}

// add counts o's calls in r.
func (r *LoadResult) add(o LoadResult) {
	r.Calls += o.Calls
	r.Failures += o.Failures
	r.Late += o.Late
	r.Elapsed += o.Elapsed
	r.Latencies = append(r.Latencies, o.Latencies...)
	for c, n := range o.Errors {
		r.Errors[c] += n
	}
}

// PerSecond returns successful calls per second.
func (r LoadResult) PerSecond() float64 {
	return float64(r.Calls-r.Failures) / r.Elapsed.Seconds()
}

// HonestLoad has each caller call action on target back to back for d, and
// collects every latency and failure. A call still in flight when d ends
// counts as late, not as served in d (its latency is kept): a stall shows
// as lost throughput, not as a longer window.
func (m *Mesh) HonestLoad(ctx context.Context, callers []string, target, action string, d time.Duration) LoadResult {
	var mu sync.Mutex
	res := LoadResult{Errors: map[trust.Code]int{}}
	var wg sync.WaitGroup
	tid := m.Agents[target].ID()
	start := time.Now()
	for _, c := range callers {
		n := m.Agents[c].Node
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				t0 := time.Now()
				_, err := n.Call(ctx, tid, action, nil, nil)
				lat := time.Since(t0)
				mu.Lock()
				switch {
				case time.Since(start) > d:
					res.Late++
					res.Latencies = append(res.Latencies, lat)
				case err != nil:
					res.Calls++
					res.Failures++
					res.Errors[trust.CodeOf(err)]++
				default:
					res.Calls++
					res.Latencies = append(res.Latencies, lat)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.Elapsed = d
	return res
}
