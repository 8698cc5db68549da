package protocol

import (
	"crypto/ed25519"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// baselineVerify measures one plain Ed25519 verification of a 100-byte
// message (median of 5 timed batches), once per process, so that every
// benchmark can report its cost as a multiple of it (x_ed25519), measured
// in the same run on the same machine.
var baselineVerify = sync.OnceValue(func() float64 {
	pub, priv, _ := ed25519.GenerateKey(seed(7))
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	const n = 2000
	var runs []float64
	for r := 0; r < 5; r++ {
		start := time.Now()
		for i := 0; i < n; i++ {
			if !ed25519.Verify(pub, msg, sig) {
				panic("verify")
			}
		}
		runs = append(runs, float64(time.Since(start).Nanoseconds())/n)
	}
	slices.Sort(runs)
	return runs[2]
})

func reportRatio(b *testing.B) {
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(per/baselineVerify(), "x_ed25519")
}

func BenchmarkEd25519Verify(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(seed(7))
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !ed25519.Verify(pub, msg, sig) {
			b.Fatal("verify")
		}
	}
}

// chainOf returns a token of the given depth whose leaf is held by leaf.
func chainOf(b *testing.B, anchor *trust.AnchorKey, leaf *trust.Identity, depth int) *trust.Token {
	ids := make([]*trust.Identity, depth)
	for i := range ids[:depth-1] {
		ids[i], _ = trust.GenerateIdentity(seed(byte(50 + i)))
	}
	ids[depth-1] = leaf
	g := trust.Grant{Scopes: []string{"read:logs", "write:reports"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}
	tok, err := trust.IssueToken(anchor, ids[0].Public(), g, t0)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i < depth; i++ {
		tok, err = tok.Delegate(ids[i-1], ids[i].Public(), trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
		if err != nil {
			b.Fatal(err)
		}
	}
	return tok
}

func BenchmarkSeal(b *testing.B) {
	w := newWorld(b)
	tok := chainOf(b, w.anchor, w.alice, 3)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Seal(w.alice, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: "read:logs", Payload: make([]byte, 100), Token: tok}, t0); err != nil {
			b.Fatal(err)
		}
	}
	reportRatio(b)
}

// BenchmarkDecide is the full decision function on a request with a chain
// of the given depth. cold: no cached links (every link signature checked);
// warm: the chain was seen before (only the envelope signature is checked).
func BenchmarkDecide(b *testing.B) {
	for _, depth := range []int{1, 3, 5} {
		for _, mode := range []string{"cold", "warm"} {
			b.Run(fmt.Sprintf("depth=%d/%s", depth, mode), func(b *testing.B) {
				w := newWorld(b)
				tok := chainOf(b, w.anchor, w.alice, depth)
				p := trust.DefaultPolicy(w.anchor.Public())
				if mode == "cold" {
					p.CacheSize = 0
				}
				v, _ := trust.NewVerifier(p)
				d := &Decider{Verifier: v, Replay: NewReplayGuard(time.Hour, 1<<22, 1<<22)}
				envs := make([][]byte, b.N)
				for i := range envs {
					envs[i], _ = Seal(w.alice, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: "read:logs", Payload: make([]byte, 100), Token: tok}, t0)
				}
				if mode == "warm" {
					if err := v.Authorize(tok, w.alice.Public(), "read:logs", t0); err != nil {
						b.Fatal(err)
					}
				}
				x := w.expect(w.alice)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := d.Decide(envs[i], x, t0); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportRatio(b)
				b.ReportMetric(float64(depth+1), "verifies_naive")
				b.ReportMetric(float64(len(envs[0])), "envelope_bytes")
				b.ReportMetric(float64(len(tok.Bytes()))/float64(depth), "bytes_per_link")

			})
		}
	}
}
