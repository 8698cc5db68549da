package trust

import (
	"crypto/ed25519"
	"crypto/sha512"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
)

// expandedKey is an Ed25519 private key in the form signing uses: the
// clamped secret scalar a and the nonce prefix, the two halves of
// SHA-512(seed), computed once instead of every signature, and the public
// key A as it stands in the private key (bytes 32–63, which
// crypto/ed25519 hashes as they are). Its signatures are crypto/ed25519's
// byte for byte (RFC 8032 is deterministic): TestSignRFC8032 and
// FuzzSignDifferential hold it to that. R = r·B runs on curve25519-voi's
// basepoint table, which is cheaper than the standard library's
// (BENCHMARKS.md, issue 15, the signer). It holds secrets: it is never
// printed, and clear wipes it.
type expandedKey struct {
	a      scalar.Scalar
	prefix [32]byte
	pub    [32]byte
}

// expandKey expands a 64-byte crypto/ed25519 private key (seed‖A).
func expandKey(priv ed25519.PrivateKey) *expandedKey {
	h := sha512.Sum512(priv[:32])
	defer clear(h[:])
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	x := new(expandedKey)
	if _, err := x.a.SetBits(h[:32]); err != nil { // cannot fail on 32 bytes
		panic("trust: expand key: " + err.Error())
	}
	copy(x.prefix[:], h[32:])
	copy(x.pub[:], priv[32:])
	return x
}

// sign returns the Ed25519 signature of domain‖msg, without joining the
// two: both hashes take them one after the other.
func (x *expandedKey) sign(domain string, msg []byte) []byte {
	var sum [sha512.Size]byte
	h := sha512.New()
	h.Write(x.prefix[:])
	h.Write([]byte(domain))
	h.Write(msg)
	h.Sum(sum[:0])
	var r scalar.Scalar
	if _, err := r.SetBytesModOrderWide(sum[:]); err != nil { // cannot fail on 64 bytes
		panic("trust: sign: " + err.Error())
	}
	var R curve.EdwardsPoint
	var rc curve.CompressedEdwardsY
	rc.SetEdwardsPoint(R.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &r))

	h.Reset()
	h.Write(rc[:])
	h.Write(x.pub[:])
	h.Write([]byte(domain))
	h.Write(msg)
	h.Sum(sum[:0])
	var s scalar.Scalar
	if _, err := s.SetBytesModOrderWide(sum[:]); err != nil {
		panic("trust: sign: " + err.Error())
	}
	s.Mul(&s, &x.a)
	s.Add(&s, &r)
	sig := make([]byte, ed25519.SignatureSize)
	copy(sig, rc[:])
	if err := s.ToBytes(sig[32:]); err != nil { // cannot fail on 32 bytes
		panic("trust: sign: " + err.Error())
	}
	r.Zero()
	clear(sum[:])
	return sig
}

// clear wipes the secret scalar and prefix.
func (x *expandedKey) clear() {
	x.a.Zero()
	clear(x.prefix[:])
}
