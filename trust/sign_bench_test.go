package trust

import (
	"crypto/ed25519"
	"crypto/sha512"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/meshagent/meshagent/internal/cputime"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// BenchmarkSign: one signature of DomainLink‖100 bytes, each as a multiple
// of what kp.sign did before issue 15's signer (join the two, then
// crypto/ed25519.Sign), measured in the same process, interleaved, by
// the thread's CPU clock (x_stdlib). BENCHMARKS.md, issue 15, the signer:
// go test ./trust -run '^$' -bench 'BenchmarkSign$' -benchtime 20000x
//
// stdlib: that baseline itself; voi: curve25519-voi's Sign (it hashes the
// seed every time, as crypto/ed25519 does); filippo-expanded: the
// standard library's arithmetic (filippo.io/edwards25519) from a
// precomputed scalar and prefix, without the join; expanded: expandedKey
// (voi's basepoint table, precomputed, no join), what kp.sign runs.
func BenchmarkSign(b *testing.B) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	msg := make([]byte, 100)
	stdlib := func() []byte {
		buf := make([]byte, 0, len(DomainLink)+len(msg))
		buf = append(buf, DomainLink...)
		buf = append(buf, msg...)
		return ed25519.Sign(priv, buf)
	}
	vpriv := voi.PrivateKey(priv)
	x := expandKey(priv)
	fx := newFilippoKey(priv)
	cases := []struct {
		name string
		f    func() []byte
	}{
		{"stdlib", stdlib},
		{"voi", func() []byte {
			buf := make([]byte, 0, len(DomainLink)+len(msg))
			buf = append(buf, DomainLink...)
			buf = append(buf, msg...)
			return voi.Sign(vpriv, buf)
		}},
		{"filippo-expanded", func() []byte { return fx.sign(DomainLink, msg) }},
		{"expanded", func() []byte { return x.sign(DomainLink, msg) }},
	}
	want := string(stdlib())
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			const block = 4
			var tOp, tBase time.Duration
			defer cputime.LockThread()()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += block {
				start := cputime.Thread()
				for range block {
					stdlib()
				}
				mid := cputime.Thread()
				for j := i; j < i+block && j < b.N; j++ {
					if string(c.f()) != want {
						b.Fatal("signature differs")
					}
				}
				tBase += mid - start
				tOp += cputime.Thread() - mid
			}
			b.StopTimer()
			blocks := (b.N + block - 1) / block
			per := float64(tOp) / float64(b.N)
			b.ReportMetric(per, "cpu-ns/sig")
			b.ReportMetric(per/(float64(tBase)/float64(blocks*block)), "x_stdlib")
		})
	}
}

// filippoKey signs as crypto/ed25519 does, with its arithmetic, from a
// precomputed scalar and prefix: what precomputation alone saves.
type filippoKey struct {
	a      *edwards25519.Scalar
	prefix []byte
	pub    []byte
}

func newFilippoKey(priv ed25519.PrivateKey) filippoKey {
	h := sha512.Sum512(priv[:32])
	a, _ := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	return filippoKey{a, h[32:], priv[32:]}
}

func (k filippoKey) sign(domain string, msg []byte) []byte {
	var sum [64]byte
	h := sha512.New()
	h.Write(k.prefix)
	h.Write([]byte(domain))
	h.Write(msg)
	r, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(sum[:0]))
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
	h.Reset()
	h.Write(R)
	h.Write(k.pub)
	h.Write([]byte(domain))
	h.Write(msg)
	kk, _ := edwards25519.NewScalar().SetUniformBytes(h.Sum(sum[:0]))
	s := edwards25519.NewScalar().MultiplyAdd(kk, k.a, r)
	return append(R, s.Bytes()...)
}
