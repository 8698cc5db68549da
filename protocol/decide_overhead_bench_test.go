package protocol

import (
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/meshagent/meshagent/internal/cputime"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// BenchmarkDecideOverhead measures what a warm decision costs beyond its
// envelope signature. Blocks of 4 decisions alternate with blocks of 4
// checks of other envelopes' signatures alone (PublicKey.Verify of the
// same size of body, bytes as cold as the decision's) and blocks of 4
// crypto/ed25519 verifications of a 100-byte message, each timed by the
// thread's CPU clock. overhead-ns is a decision minus a signature check;
// x_overhead is that against one crypto/ed25519 verification, the part
// of BenchmarkDecideRatio's x_ed25519 that is not the signature.
//
// go test ./protocol -run '^$' -bench DecideOverhead -benchtime 4000x
func BenchmarkDecideOverhead(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(seed(7))
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	for _, depth := range []int{1, 3, 5} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			w := newWorld(b)
			v, _ := trust.NewVerifier(trust.DefaultPolicy(w.anchor.Public()))
			d := &Decider{Verifier: v, Replay: NewReplayGuard(time.Hour, 1<<22, 1<<22)}
			tok := chainOf(b, w.anchor, w.alice, depth)
			if err := v.Authorize(tok, w.alice.Public(), "read:logs", t0); err != nil {
				b.Fatal(err)
			}
			const block = 4
			n := (b.N + block - 1) / block * block
			envs, sigs := make([][]byte, n), make([]*Envelope, n)
			for i := range envs {
				envs[i], _ = Seal(w.alice, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: "read:logs", Payload: make([]byte, 100), Token: tok}, t0)
				raw, _ := Seal(w.alice, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: "read:logs", Payload: make([]byte, 100), Token: tok}, t0)
				sigs[i], _ = Open(raw, DefaultMaxEnvelopeSize, trust.DefaultMaxTokenSize)
			}
			x := w.expect(w.alice)
			var tDecide, tSig, tBase time.Duration
			defer cputime.LockThread()()
			b.ResetTimer()
			for i := 0; i < n; i += block {
				t1 := cputime.Thread()
				for range block {
					if !ed25519.Verify(pub, msg, sig) {
						b.Fatal("verify")
					}
				}
				t2 := cputime.Thread()
				for j := i; j < i+block; j++ {
					if _, err := d.Decide(envs[j], x, t0); err != nil {
						b.Fatal(err)
					}
				}
				t3 := cputime.Thread()
				for j := i; j < i+block; j++ {
					if e := sigs[j]; !e.Sender.Verify(wire.DomainEnvelope, e.body, e.sig) {
						b.Fatal("envelope signature")
					}
				}
				t4 := cputime.Thread()
				tBase, tDecide, tSig = tBase+t2-t1, tDecide+t3-t2, tSig+t4-t3
			}
			b.StopTimer()
			per := func(t time.Duration) float64 { return float64(t) / float64(n) }
			b.ReportMetric(per(tDecide), "cpu-ns/decision")
			b.ReportMetric(per(tSig), "cpu-ns/envsig")
			b.ReportMetric(per(tDecide)-per(tSig), "overhead-ns")
			b.ReportMetric(per(tDecide)/per(tBase), "x_ed25519")
			b.ReportMetric(per(tSig)/per(tBase), "x_envsig")
			b.ReportMetric((per(tDecide)-per(tSig))/per(tBase), "x_overhead")
		})
	}
}
