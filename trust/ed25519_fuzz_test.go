package trust

import (
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/edwards25519"
)

// FuzzVerifyDifferential: every way this package verifies agrees with
// crypto/ed25519 (see differ). craft 0 takes key, message and signature
// as they come (the key cut or padded to 32 bytes); any other craft signs
// for real under a key derived from key, then bends the signature the way
// its bits say: torsion added to A (bit 0) or to R (bits 1–3 pick which
// multiple of a point of order 8), S + L (bit 4), one flipped bit (bit 5,
// at an offset taken from sig), a flipped message bit (bit 6). Seeds:
// testdata/fuzz/FuzzVerifyDifferential (written with -update).
func FuzzVerifyDifferential(f *testing.F) {
	f.Add([]byte{}, []byte{}, []byte{}, uint8(0))
	for c := range 8 {
		f.Add([]byte("key"), []byte("message"), []byte("nonce"), uint8(1+c*37))
	}
	t8, _ := torsion(f)
	f.Fuzz(func(t *testing.T, key, msg, sig []byte, craft uint8) {
		if craft == 0 {
			pub := make([]byte, 32)
			copy(pub, key)
			differ(t, sigCase{"raw", pub, msg, sig})
			return
		}
		h := sha512.Sum512(append([]byte("seed"), key...))
		a, _ := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
		s := signer{a, new(edwards25519.Point).ScalarBaseMult(a)}
		A := s.A
		if craft&1 != 0 {
			A = new(edwards25519.Point).Add(A, t8)
		}
		var tR *edwards25519.Point
		if m := (craft >> 1) & 7; m != 0 {
			tR = new(edwards25519.Point).ScalarMult(scalarOf(uint64(m)), t8)
		}
		hr := sha512.Sum512(append([]byte("nonce"), sig...))
		r, _ := edwards25519.NewScalar().SetUniformBytes(hr[:])
		pub := A.Bytes()
		out, _ := s.sign(r, tR, pub, msg)
		if craft&16 != 0 {
			out = append(out[:32:32], addL(out[32:])...)
		}
		if craft&32 != 0 && len(sig) > 0 {
			bit := int(sig[0]) * 2 % 512
			out[bit/8] ^= 1 << (bit % 8)
		}
		if craft&64 != 0 && len(msg) > 0 {
			msg = append([]byte(nil), msg...)
			msg[0] ^= 1
		}
		differ(t, sigCase{fmt.Sprintf("craft %08b", craft), pub, msg, out})
	})
}

func scalarOf(v uint64) *edwards25519.Scalar {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(v >> (8 * i))
	}
	s, _ := edwards25519.NewScalar().SetCanonicalBytes(b[:])
	return s
}

// writeDifferentialSeeds writes the edge vectors (raw) and a crafted seed
// per torsion multiple as the seed corpus of FuzzVerifyDifferential.
func writeDifferentialSeeds(t *testing.T, vs []edgeVector) {
	dir := filepath.Join("testdata", "fuzz", "FuzzVerifyDifferential")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, key, msg, sig []byte, craft uint8) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n[]byte(%q)\nbyte(%q)\n", key, msg, sig, craft)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, v := range vs {
		pub, _ := hex.DecodeString(v.Pub)
		msg, _ := hex.DecodeString(v.Msg)
		sig, _ := hex.DecodeString(v.Sig)
		write(fmt.Sprintf("seed-edge-%02d", i), pub, msg, sig, 0)
	}
	for _, craft := range []uint8{1, 2, 3, 8, 9, 16, 32, 64, 0x7f} {
		write(fmt.Sprintf("seed-craft-%02x", craft), []byte("key"), []byte("message"), []byte("nonce"), craft)
	}
}
