package trust

import (
	"crypto/ed25519"
	"runtime"
	"testing"
	"time"

	"github.com/meshagent/meshagent/internal/cputime"
	"github.com/oasisprotocol/curve25519-voi/curve"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// The verifier's cost, each as a multiple of one crypto/ed25519
// verification of a 100-byte message measured in the same process
// (x_ed25519, as in package protocol). BENCHMARKS.md, issue 15:
// go test ./trust -run '^$' -bench 'Verify$|BatchExactCost' -benchtime 4000x
// go test ./trust -run '^$' -bench KeyCacheMemory -benchtime 1x

// ratioBench runs op b.N times in blocks of 4, each after a block of 4
// crypto/ed25519 verifications of a 100-byte message, timed by the CPU
// clock of the benchmark's thread (waiting for a CPU on a shared machine
// counts for neither), and reports op's CPU time per signature and as a
// multiple of one such verification (x_ed25519). perOp is the signatures
// one op checks.
func ratioBench(b *testing.B, perOp int, op func() bool) {
	k, priv := keyOf(7)
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	const block = 4
	var tOp, tBase time.Duration
	defer cputime.LockThread()()
	b.ResetTimer()
	for i := 0; i < b.N; i += block {
		start := cputime.Thread()
		for range block {
			if !ed25519.Verify(k[:], msg, sig) {
				b.Fatal("verify")
			}
		}
		mid := cputime.Thread()
		for j := i; j < i+block && j < b.N; j++ {
			if !op() {
				b.Fatal("op")
			}
		}
		tBase += mid - start
		tOp += cputime.Thread() - mid
	}
	b.StopTimer()
	blocks := (b.N + block - 1) / block
	per := float64(tOp) / float64(b.N*perOp)
	b.ReportMetric(per, "cpu-ns/sig")
	b.ReportMetric(per/(float64(tBase)/float64(blocks*block)), "x_ed25519")
}

// BenchmarkVerify: one signature over 100 bytes. stdlib: crypto/ed25519;
// voi: curve25519-voi with the stdlib options, key decoded every time;
// voi-expanded: from a precomputed key; Verify-hit: PublicKey.Verify with
// the key in the cache; cache-miss: the cache's path for a key it does
// not hold and will not admit (lookup, doorkeeper, plain voi);
// cache-admit: a key's second signature (expand, verify, insert).
// voi-expanded-cofactored is for comparison only.
func BenchmarkVerify(b *testing.B) {
	k, priv := keyOf(8)
	msg := make([]byte, 100)
	sig := ed25519.Sign(priv, msg)
	x, _ := voi.NewExpandedPublicKey(k[:])
	k2, priv2 := keyOf(9)
	sig2 := ed25519.Sign(priv2, msg)
	cases := []struct {
		name string
		f    func() bool
	}{
		{"stdlib", func() bool { return ed25519.Verify(k[:], msg, sig) }},
		{"voi", func() bool { return voi.VerifyWithOptions(k[:], msg, sig, stdlibOptions) }},
		{"voi-expanded", func() bool { return voi.VerifyExpandedWithOptions(x, msg, sig, stdlibOptions) }},
		{"Verify-hit", func() bool { return k.Verify("", msg, sig) }},
		// Not used (it is not crypto/ed25519's equation): what voi's
		// cofactored check, with Pornin's lattice trick, costs.
		{"voi-expanded-cofactored", func() bool { return voi.VerifyExpandedWithOptions(x, msg, sig, fipsOptions) }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) { ratioBench(b, 1, c.f) })
	}
	b.Run("cache-miss", func(b *testing.B) {
		c := newKeyCache(16, 1) // two keys take turns in a doorkeeper of one
		i := 0
		ratioBench(b, 1, func() bool {
			kk, s := k, sig
			if i++; i%2 == 0 {
				kk, s = k2, sig2
			}
			return c.verify(kk, msg, s)
		})
		if c.len() != 0 {
			b.Fatal("admitted")
		}
	})
	b.Run("cache-admit", func(b *testing.B) {
		ratioBench(b, 1, func() bool {
			x, err := voi.NewExpandedPublicKey(k[:])
			return err == nil && voi.VerifyExpandedWithOptions(x, msg, sig, stdlibOptions)
		})
	})
}

var fipsOptions = &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}

// BenchmarkBatchExactCost: what a batch saves, and what making it exact
// would cost. batch64: voi's (cofactored) batch of 64 signatures under
// 64 expanded keys, per signature; torsion-check: the check that one R
// is torsion-free ([L]R == identity), which an exact batch would need per
// signature (see TestBatchIsNotExact).
func BenchmarkBatchExactCost(b *testing.B) {
	const n = 64
	msg := make([]byte, 100)
	var xs []*voi.ExpandedPublicKey
	var sigs [][]byte
	for i := range n {
		k, priv := keyOf(100 + i)
		x, _ := voi.NewExpandedPublicKey(k[:])
		xs = append(xs, x)
		sigs = append(sigs, ed25519.Sign(priv, msg))
	}
	b.Run("batch64", func(b *testing.B) {
		ratioBench(b, n, func() bool {
			v := voi.NewBatchVerifierWithCapacity(n)
			for i := range n {
				v.AddExpandedWithOptions(xs[i], msg, sigs[i], fipsOptions)
			}
			return v.VerifyBatchOnly(nil)
		})
	})
	b.Run("torsion-check", func(b *testing.B) {
		var cr curve.CompressedEdwardsY
		_, _ = cr.SetBytes(sigs[0][:32])
		ratioBench(b, 1, func() bool {
			var R curve.EdwardsPoint
			_, err := R.SetCompressedY(&cr)
			return err == nil && R.IsTorsionFree()
		})
	})
}

// BenchmarkKeyCacheMemory: the heap a full cache holds per key.
func BenchmarkKeyCacheMemory(b *testing.B) {
	const n = 1024
	msg := []byte("m")
	type kp struct {
		k   PublicKey
		sig []byte
	}
	var keys []kp
	for i := range n {
		k, priv := keyOf(10000 + i)
		keys = append(keys, kp{k, ed25519.Sign(priv, msg)})
	}
	for b.Loop() {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		c := newKeyCache(n, n)
		for _, kk := range keys {
			c.verify(kk.k, msg, kk.sig)
			c.verify(kk.k, msg, kk.sig)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		if c.len() != n {
			b.Fatalf("cache holds %d", c.len())
		}
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "B/key")
		runtime.KeepAlive(c)
	}
}
