package protocol

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

type replayGuardUnderTest interface {
	Seen(sender trust.PublicKey, nonce []byte) bool
	Record(sender trust.PublicKey, nonce []byte, ts, now time.Time) error
	Len() int
}

// BenchmarkReplayGuard is what the decision function asks of the replay
// guard for each accepted envelope, Seen then Record of a fresh nonce,
// against the guard as it was (legacy: a map and an expiry heap) and the
// fingerprint guard (buckets), in steady state: the guard holds about
// 2^20 nonces (filled before the timer starts) and the clock moves on by
// window / 2^20 an envelope, so that as many nonces leave the window as
// arrive. 16 senders, timestamps = now, the production window. B/entry is
// the live heap the filled guard holds, after a GC, per nonce held.
func BenchmarkReplayGuard(b *testing.B) {
	const held = 1 << 20
	step := DefaultWindow / held
	impls := []struct {
		name string
		make func() replayGuardUnderTest
	}{
		{"legacy", func() replayGuardUnderTest { return newLegacyReplayGuard(DefaultWindow, 1<<23, 1<<23) }},
		{"buckets", func() replayGuardUnderTest { return NewReplayGuard(DefaultWindow, 0, 0) }},
	}
	for _, impl := range impls {
		for _, parallel := range []bool{false, true} {
			b.Run(fmt.Sprintf("impl=%s/parallel=%t", impl.name, parallel), func(b *testing.B) {
				base := heapInUse()
				g := impl.make()
				var clock atomic.Int64 // envelopes so far: the clock is t0 + clock*step
				one := func(i int64, nb *[16]byte) {
					now := t0.Add(time.Duration(i) * step)
					s, n := senderKey(int(i%16)), counterNonce(nb, uint64(i))
					if g.Seen(s, n) {
						b.Fatal("a fresh nonce seen")
					}
					if err := g.Record(s, n, now, now); err != nil {
						b.Fatal(err)
					}
				}
				var nb [16]byte
				for range held + held/16 {
					one(clock.Add(1), &nb)
				}
				perEntry := float64(heapInUse()-base) / float64(g.Len())
				b.ResetTimer()
				if parallel {
					b.RunParallel(func(pb *testing.PB) {
						var nb [16]byte
						for pb.Next() {
							one(clock.Add(1), &nb)
						}
					})
				} else {
					for range b.N {
						one(clock.Add(1), &nb)
					}
				}
				b.StopTimer()
				b.ReportMetric(perEntry, "B/entry")
				b.ReportMetric(float64(g.Len()), "entries")
				runtime.KeepAlive(g)
			})
		}
	}
}
