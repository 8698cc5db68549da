package protocol

import (
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// BenchmarkDecideInterleaved is the decision function on a request with a
// chain of depth 1-5, each call followed by one plain crypto/ed25519
// verify of a 100-byte message and one envelope signature check, timed
// apart: the load of a shared machine weighs on all three alike, so the
// ratios hold where absolute times do not. Modes: warm, the chain cache
// (a repeated chain); links, the link-signature cache only (what a warm
// chain cost before the chain cache); cold, no cache (every link
// signature checked); newleaf, every chain new but for its last link
// (a delegation per task: the chain cache misses, the link cache holds
// the prefix), and newleaf-nolinks, the same without the link cache.
//
// Ratios are of medians, which a preempted iteration does not move.
// x_ed25519: a decision against one plain verify. overhead_x_ed25519: the
// decision minus its envelope signature check, against one plain verify
// (the part the chain cache works on). x_naive (cold): against d+1 plain
// verifies.
//
// go test ./protocol -run '^$' -bench DecideInterleaved -benchtime 3000x
func BenchmarkDecideInterleaved(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(seed(7))
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	for _, mode := range []string{"warm", "links", "cold", "newleaf", "newleaf-nolinks"} {
		for _, depth := range []int{1, 2, 3, 4, 5} {
			if strings.HasPrefix(mode, "newleaf") && depth == 1 {
				continue
			}
			b.Run(fmt.Sprintf("%s/depth=%d", mode, depth), func(b *testing.B) {
				w := newWorld(b)
				tok := chainOf(b, w.anchor, w.alice, depth)
				p := trust.DefaultPolicy(w.anchor.Public())
				switch mode {
				case "links":
					p.ChainCacheSize = 0
				case "cold":
					p.ChainCacheSize, p.CacheSize = 0, 0
				case "newleaf-nolinks":
					p.CacheSize = 0
				}
				v, _ := trust.NewVerifier(p)
				d := &Decider{Verifier: v, Replay: NewReplayGuard(time.Hour, 1<<22, 1<<22)}
				var prev *trust.Identity
				var prefix *trust.Token
				if strings.HasPrefix(mode, "newleaf") { // a new last link each time, as a delegation per task
					prev, _ = trust.GenerateIdentity(seed(byte(50 + depth - 2)))
					prefix = chainOf(b, w.anchor, prev, depth-1)
				}
				envs := make([][]byte, b.N+1)
				for i := range envs {
					t := tok
					if prefix != nil {
						var err error
						if t, err = prefix.Delegate(prev, w.alice.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0); err != nil {
							b.Fatal(err)
						}
					}
					envs[i], _ = Seal(w.alice, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: "read:logs", Payload: make([]byte, 100), Token: t}, t0)
				}
				x := w.expect(w.alice)
				if _, err := d.Decide(envs[b.N], x, t0); err != nil { // warms the caches
					b.Fatal(err)
				}
				one, _ := Open(envs[b.N], DefaultMaxEnvelopeSize, trust.DefaultMaxTokenSize)
				decide, plain, envsig := make([]time.Duration, b.N), make([]time.Duration, b.N), make([]time.Duration, b.N)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t1 := time.Now()
					if _, err := d.Decide(envs[i], x, t0); err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					if !ed25519.Verify(pub, msg, sig) {
						b.Fatal("verify")
					}
					t3 := time.Now()
					if !one.VerifySignature() {
						b.Fatal("envelope signature")
					}
					t4 := time.Now()
					decide[i], plain[i], envsig[i] = t2.Sub(t1), t3.Sub(t2), t4.Sub(t3)
				}
				b.StopTimer()
				dm, pm, em := median(decide), median(plain), median(envsig)
				b.ReportMetric(dm, "decide_p50_ns")
				b.ReportMetric(pm, "ed25519_p50_ns")
				b.ReportMetric(dm/pm, "x_ed25519")
				b.ReportMetric((dm-em)/pm, "overhead_x_ed25519")
				if mode == "cold" || strings.HasPrefix(mode, "newleaf") {
					b.ReportMetric(dm/pm/float64(depth+1), "x_naive")
				}
			})
		}
	}
}

// median returns the median of d in nanoseconds; d is sorted.
func median(d []time.Duration) float64 {
	slices.Sort(d)
	return float64(d[len(d)/2].Nanoseconds())
}
