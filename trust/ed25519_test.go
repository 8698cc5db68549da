package trust

import (
	"bufio"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/edwards25519"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// sigCase is one (key, message, signature) to verify.
type sigCase struct {
	name          string
	pub, msg, sig []byte
}

// differ verifies c every way this package can and compares each with
// crypto/ed25519: voi plain and expanded on the raw key (small-order keys
// included), a fresh key cache on its three paths (first sighting, second,
// expanded hit) and PublicKey.Verify, which must equal crypto/ed25519 and
// not Weak. It returns crypto/ed25519's verdict.
func differ(t testing.TB, c sigCase) bool {
	t.Helper()
	if len(c.pub) != PublicKeySize {
		t.Fatalf("%s: key of %d bytes", c.name, len(c.pub))
	}
	want := ed25519.Verify(c.pub, c.msg, c.sig)
	if got := voi.VerifyWithOptions(c.pub, c.msg, c.sig, stdlibOptions); got != want {
		t.Errorf("%s: voi %v, crypto/ed25519 %v", c.name, got, want)
	}
	if x, err := voi.NewExpandedPublicKey(c.pub); err == nil {
		if got := voi.VerifyExpandedWithOptions(x, c.msg, c.sig, stdlibOptions); got != want {
			t.Errorf("%s: voi expanded %v, crypto/ed25519 %v", c.name, got, want)
		}
	} else if want {
		t.Errorf("%s: crypto/ed25519 accepts a key voi cannot expand: %v", c.name, err)
	}
	k := PublicKey(c.pub)
	cache := newKeyCache(4, 16)
	for i := range 3 {
		if got := cache.verify(k, c.msg, c.sig); got != want {
			t.Errorf("%s: key cache, use %d: %v, crypto/ed25519 %v", c.name, i+1, got, want)
		}
	}
	if got := k.Verify("", c.msg, c.sig); got != (want && !k.Weak()) {
		t.Errorf("%s: PublicKey.Verify %v, crypto/ed25519 %v, weak %v", c.name, got, want, k.Weak())
	}
	return want
}

func readGzip(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "ed25519", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if _, err := bufio.NewReader(z).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return []byte(b.String())
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// count tallies verdicts, so that each file is seen to exercise both.
type count struct{ accept, reject int }

func (n *count) add(ok bool) {
	if ok {
		n.accept++
	} else {
		n.reject++
	}
}

// TestEd25519RFC8032: the 128 signatures of sign.input (the first three
// are RFC 8032's TEST 1–3) verify both ways, and so does nothing else:
// each with one bit of R, of S or of the message flipped is refused by
// both.
func TestEd25519RFC8032(t *testing.T) {
	t.Parallel()
	lines := strings.Split(strings.TrimSpace(string(readGzip(t, "sign.input.gz"))), "\n")
	if len(lines) != 128 {
		t.Fatalf("%d lines", len(lines))
	}
	var n count
	for i, line := range lines {
		f := strings.Split(line, ":")
		pub, msg, sig := unhex(t, f[1]), unhex(t, f[2]), unhex(t, f[3])[:64]
		if i == 0 && f[1] != "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" {
			t.Fatal("first vector is not RFC 8032 TEST 1")
		}
		if !differ(t, sigCase{f[1], pub, msg, sig}) {
			t.Fatalf("vector %d does not verify", i)
		}
		n.add(true)
		bit := i % 512
		bad := append([]byte(nil), sig...)
		bad[bit/8] ^= 1 << (bit % 8)
		n.add(differ(t, sigCase{f[1] + " flipped sig bit", pub, msg, bad}))
		if len(msg) > 0 {
			m := append([]byte(nil), msg...)
			m[i%len(m)] ^= 0x80
			n.add(differ(t, sigCase{f[1] + " flipped msg bit", pub, m, sig}))
		}
	}
	if n.accept != 128 || n.reject < 250 {
		t.Fatalf("accepted %d, rejected %d", n.accept, n.reject)
	}
}

// TestEd25519Wycheproof: every Wycheproof EdDSA test gets the same verdict
// from both, and that verdict is Wycheproof's.
func TestEd25519Wycheproof(t *testing.T) {
	t.Parallel()
	var file struct {
		TestGroups []struct {
			Key   struct{ PK string }
			Tests []struct {
				TcID    int
				Comment string
				Msg     string
				Sig     string
				Result  string
			}
		}
	}
	if err := json.Unmarshal(readGzip(t, "eddsa_test.json.gz"), &file); err != nil {
		t.Fatal(err)
	}
	var n count
	for _, g := range file.TestGroups {
		pub := unhex(t, g.Key.PK)
		for _, tc := range g.Tests {
			ok := differ(t, sigCase{tc.Comment, pub, unhex(t, tc.Msg), unhex(t, tc.Sig)})
			if ok != (tc.Result == "valid") {
				t.Errorf("test %d (%s): verdict %v, Wycheproof says %s", tc.TcID, tc.Comment, ok, tc.Result)
			}
			n.add(ok)
		}
	}
	if n.accept+n.reject != 145 || n.accept == 0 || n.reject == 0 {
		t.Fatalf("accepted %d, rejected %d", n.accept, n.reject)
	}
}

// TestEd25519Speccheck: the 12 cases of "Taming the many EdDSAs", with
// crypto/ed25519's verdict on each pinned (so that a Go release that
// changed it would show here, not as a split from older nodes).
func TestEd25519Speccheck(t *testing.T) {
	t.Parallel()
	cases := speccheckCases(t)
	// crypto/ed25519: cofactorless, S < L, any A that decodes, R compared
	// as bytes.
	want := []bool{true, true, true, true, false, false, false, false, false, false, false, true}
	if len(cases) != len(want) {
		t.Fatalf("%d cases", len(cases))
	}
	for i, c := range cases {
		if got := differ(t, sigCase{c.P, unhex(t, c.P), unhex(t, c.M), unhex(t, c.S)}); got != want[i] {
			t.Errorf("case %d: crypto/ed25519 says %v, pinned %v", i, got, want[i])
		}
	}
}

type speccheckCase struct {
	M string `json:"message"`
	P string `json:"pub_key"`
	S string `json:"signature"`
}

func speccheckCases(t *testing.T) []speccheckCase {
	var cases []speccheckCase
	if err := json.Unmarshal(readGzip(t, "speccheck_cases.json.gz"), &cases); err != nil {
		t.Fatal(err)
	}
	return cases
}

// TestEd25519CCTVVectors: 768 signatures over every combination of
// small-order, mixed-order and non-canonical A and R get the same verdict
// from both; each flag is seen both accepted and refused where
// crypto/ed25519 can accept it at all.
func TestEd25519CCTVVectors(t *testing.T) {
	t.Parallel()
	var vs []struct {
		A, R, S, M string
		Flags      []string
	}
	if err := json.Unmarshal(readGzip(t, "ed25519vectors.json.gz"), &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) != 768 {
		t.Fatalf("%d vectors", len(vs))
	}
	byFlag := map[string]*count{}
	var all count
	for _, v := range vs {
		sig := append(unhex(t, v.R), unhex(t, v.S)...)
		ok := differ(t, sigCase{strings.Join(v.Flags, ",") + " " + v.M, unhex(t, v.A), []byte(v.M), sig})
		all.add(ok)
		for _, f := range v.Flags {
			if byFlag[f] == nil {
				byFlag[f] = &count{}
			}
			byFlag[f].add(ok)
		}
	}
	t.Logf("all: %+v", all)
	for f, n := range byFlag {
		t.Logf("%s: %+v", f, *n)
		if n.reject == 0 {
			t.Errorf("flag %s is never refused", f)
		}
	}
	for _, f := range []string{"LowOrderA", "LowOrderR", "LowOrderComponentA", "LowOrderComponentR", "NonCanonicalA"} {
		if byFlag[f] == nil || byFlag[f].accept == 0 {
			t.Errorf("flag %s is never accepted: the vectors do not exercise its accepting side", f)
		}
	}
}

// edgeVector is one of our crafted signatures (testdata/ed25519/edge.json)
// with crypto/ed25519's verdict and the cofactored equation's.
type edgeVector struct {
	Name       string `json:"name"`
	Pub        string `json:"pub"`
	Msg        string `json:"msg"`
	Sig        string `json:"sig"`
	Stdlib     bool   `json:"stdlib"`
	Cofactored bool   `json:"cofactored"`
}

// torsion returns the point of order 8 whose y is smallOrderY[3], and
// the one of order 2.
func torsion(t testing.TB) (t8, t2 *edwards25519.Point) {
	var err error
	if t8, err = new(edwards25519.Point).SetBytes(smallOrderY[3][:]); err != nil {
		t.Fatal(err)
	}
	if t2, err = new(edwards25519.Point).SetBytes(smallOrderY[2][:]); err != nil {
		t.Fatal(err)
	}
	return t8, t2
}

// signer is an Ed25519 secret scalar, to sign the way an attacker who
// holds a key may: with torsion added to A or R.
type signer struct {
	a *edwards25519.Scalar
	A *edwards25519.Point
}

func newSigner(t testing.TB, seed byte) signer {
	h := sha512.Sum512([]byte{seed, 'k'})
	a, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		t.Fatal(err)
	}
	return signer{a, new(edwards25519.Point).ScalarBaseMult(a)}
}

// sign signs msg with nonce r under the key encoding pub (A, or A plus
// torsion) with R = rB + tR: S = r + H(R || pub || msg)·a. It returns the
// signature and k = H(R || pub || msg) mod L.
func (s signer) sign(r *edwards25519.Scalar, tR *edwards25519.Point, pub, msg []byte) (sig []byte, k *edwards25519.Scalar) {
	R := new(edwards25519.Point).ScalarBaseMult(r)
	if tR != nil {
		R.Add(R, tR)
	}
	h := sha512.New()
	h.Write(R.Bytes())
	h.Write(pub)
	h.Write(msg)
	k, _ = edwards25519.NewScalar().SetUniformBytes(h.Sum(nil))
	S := edwards25519.NewScalar().MultiplyAdd(k, s.a, r)
	return append(R.Bytes(), S.Bytes()...), k
}

func nonce(i int) *edwards25519.Scalar {
	h := sha512.Sum512([]byte{byte(i), byte(i >> 8), 'r'})
	r, _ := edwards25519.NewScalar().SetUniformBytes(h[:])
	return r
}

// makeEdgeVectors crafts the signatures that split the cofactored
// equation (batch verification) from crypto/ed25519's cofactorless one.
func makeEdgeVectors(t testing.TB) []edgeVector {
	t8, t2 := torsion(t)
	s := newSigner(t, 1)
	A := s.A.Bytes()
	mixedA := new(edwards25519.Point).Add(s.A, t8).Bytes()
	msg := []byte("meshagent edge vector")
	var vs []edgeVector
	add := func(name string, pub, sig []byte) {
		vs = append(vs, edgeVector{Name: name, Pub: hex.EncodeToString(pub), Msg: hex.EncodeToString(msg), Sig: hex.EncodeToString(sig)})
	}
	sig, _ := s.sign(nonce(0), nil, A, msg)
	add("honest", A, sig)
	sig, _ = s.sign(nonce(1), t8, A, msg)
	add("honest key, R plus a point of order 8", A, sig)
	sig, _ = s.sign(nonce(2), t2, A, msg)
	add("honest key, R plus the point of order 2", A, sig)
	// Mixed-order A: cofactorless accepts exactly when k·T = 0 (k ≡ 0 mod
	// 8), and when R's torsion cancels k·T.
	var zero, nonzero, cancel bool
	for i := 3; !(zero && nonzero && cancel); i++ {
		sig, k := s.sign(nonce(i), nil, mixedA, msg)
		switch m := k.Bytes()[0] & 7; {
		case m == 0 && !zero:
			zero = true
			add("A plus a point of order 8, k = 0 mod 8", mixedA, sig)
		case m != 0 && !nonzero:
			nonzero = true
			add("A plus a point of order 8, k != 0 mod 8", mixedA, sig)
		case m != 0 && !cancel:
			// R = rB - k·T: [S]B - k(A+T) = rB - kT = R.
			kT := new(edwards25519.Point).ScalarMult(k, t8)
			tR := new(edwards25519.Point).Negate(kT)
			sig2, k2 := s.sign(nonce(i), tR, mixedA, msg)
			// k changed with R: keep only if k2·T = k·T.
			if k2.Bytes()[0]&7 == m {
				cancel = true
				add("A and R both mixed order, torsion cancels", mixedA, sig2)
			}
		}
	}
	// S + L: the same point, S not reduced.
	sig, _ = s.sign(nonce(0), nil, A, msg)
	sPlusL := addL(sig[32:])
	add("S plus L", A, append(sig[:32:32], sPlusL...))
	// Non-canonical A: y + p for the smallest y that is a point and not
	// small-order. Nobody knows its discrete log, so only refusal is
	// testable: the honest signature under the canonical bytes.
	for y := byte(2); y < 19; y++ {
		enc := [32]byte{y}
		if _, err := new(edwards25519.Point).SetBytes(enc[:]); err != nil || PublicKey(enc).Weak() {
			continue
		}
		nc := addP(enc[:])
		add("non-canonical A (y + p)", nc, sig)
		break
	}
	// Non-canonical R: the honest signature with R's sign bit flipped.
	bad := append([]byte(nil), sig...)
	bad[31] ^= 0x80
	add("R sign bit flipped", A, bad)
	return vs
}

// addL returns the 32-byte little-endian s + L.
func addL(s []byte) []byte {
	l := [32]byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 31: 0x10}
	return addLE(s, l[:])
}

// addP returns the 32-byte little-endian y + p.
func addP(y []byte) []byte {
	p := [32]byte{0xed}
	for i := 1; i < 31; i++ {
		p[i] = 0xff
	}
	p[31] = 0x7f
	return addLE(y, p[:])
}

func addLE(a, b []byte) []byte {
	out := make([]byte, 32)
	var carry uint16
	for i := range out {
		v := uint16(a[i]) + uint16(b[i]) + carry
		out[i], carry = byte(v), v>>8
	}
	return out
}

// cofactored verifies with voi's cofactored equation (RFC 8032 §5.1.7,
// the one batch verification uses).
func cofactored(pub, msg, sig []byte) bool {
	return voi.VerifyWithOptions(pub, msg, sig, &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5})
}

// TestEd25519EdgeVectors: our crafted signatures get crypto/ed25519's
// pinned verdict from every path, and the cofactored equation's pinned
// verdict differs where torsion is involved.
func TestEd25519EdgeVectors(t *testing.T) {
	t.Parallel()
	path := filepath.Join("testdata", "ed25519", "edge.json")
	if *update {
		vs := makeEdgeVectors(t)
		for i := range vs {
			v := &vs[i]
			pub, msg, sig := unhex(t, v.Pub), unhex(t, v.Msg), unhex(t, v.Sig)
			v.Stdlib, v.Cofactored = ed25519.Verify(pub, msg, sig), cofactored(pub, msg, sig)
		}
		b, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		writeDifferentialSeeds(t, vs)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []edgeVector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	split := 0
	for _, v := range vs {
		pub, msg, sig := unhex(t, v.Pub), unhex(t, v.Msg), unhex(t, v.Sig)
		if got := differ(t, sigCase{v.Name, pub, msg, sig}); got != v.Stdlib {
			t.Errorf("%s: crypto/ed25519 says %v, pinned %v", v.Name, got, v.Stdlib)
		}
		if got := cofactored(pub, msg, sig); got != v.Cofactored {
			t.Errorf("%s: cofactored says %v, pinned %v", v.Name, got, v.Cofactored)
		}
		if v.Stdlib != v.Cofactored {
			split++
		}
	}
	if len(vs) < 9 || split < 3 {
		t.Fatalf("%d vectors, %d on which the equations split", len(vs), split)
	}
}

// TestBatchIsNotExact shows why no batch verification is used. voi's
// batch verifier (like every Ed25519 batch: a random linear combination
// of the equations) is cofactored; crypto/ed25519 is cofactorless. A
// signer who adds a torsion point to R, even under an honest key whose
// torsion-freeness one could check once and cache, makes a signature
// that every batch accepts and crypto/ed25519 refuses. A node that
// batched would accept what its neighbours refuse (and what itself
// refuses when the same signature arrives alone). Making the batch exact
// would need a check that each R is torsion-free, a full scalar
// multiplication by L, which costs more than the batch saves
// (BenchmarkBatchExactCost). A cofactorless batch is no way out: the
// torsion parts of bad signatures live in a group of 8 elements, where
// the random combination cancels with probability at least 1/8.
func TestBatchIsNotExact(t *testing.T) {
	t.Parallel()
	t8, _ := torsion(t)
	s := newSigner(t, 2)
	A := s.A.Bytes()
	b := voi.NewBatchVerifier()
	var want []bool
	for i := range 8 {
		msg := []byte{byte(i)}
		var tR *edwards25519.Point
		if i == 5 {
			tR = t8
		}
		sig, _ := s.sign(nonce(100+i), tR, A, msg)
		b.AddWithOptions(A, msg, sig, &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5})
		want = append(want, differ(t, sigCase{"batch member", A, msg, sig}))
	}
	if want[5] || !want[0] {
		t.Fatalf("crypto/ed25519 verdicts %v: want the torsion one (5) refused, the others accepted", want)
	}
	if !b.VerifyBatchOnly(nil) {
		t.Fatal("the cofactored batch refuses: the disagreement this test documents is gone")
	}
	ok, each := b.Verify(nil)
	if !ok || !each[5] {
		t.Fatalf("batch Verify %v %v", ok, each)
	}
	// voi itself refuses to batch with the crypto/ed25519 options.
	b = voi.NewBatchVerifier()
	sig, _ := s.sign(nonce(200), nil, A, []byte("x"))
	b.AddWithOptions(A, []byte("x"), sig, stdlibOptions)
	if b.VerifyBatchOnly(nil) {
		t.Fatal("voi batches cofactorless entries")
	}
	// The standard speccheck cases 4 and 5 split the same way.
	cases := speccheckCases(t)
	for _, i := range []int{4, 5} {
		c := cases[i]
		pub, msg, sig := unhex(t, c.P), unhex(t, c.M), unhex(t, c.S)
		b := voi.NewBatchVerifier()
		b.AddWithOptions(pub, msg, sig, &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5})
		if !b.VerifyBatchOnly(nil) || ed25519.Verify(pub, msg, sig) {
			t.Errorf("speccheck case %d: batch and crypto/ed25519 agree", i)
		}
	}
}

// keyOf returns a deterministic key pair.
func keyOf(i int) (PublicKey, ed25519.PrivateKey) {
	seed := sha512.Sum512([]byte{byte(i), byte(i >> 8), byte(i >> 16), 's'})
	priv := ed25519.NewKeyFromSeed(seed[:32])
	return PublicKey(priv.Public().(ed25519.PublicKey)), priv
}

// TestKeyCacheAdmitsOnSecondValidSignature: a key enters on its second
// valid signature, never on bad ones, and is then served expanded.
func TestKeyCacheAdmitsOnSecondValidSignature(t *testing.T) {
	t.Parallel()
	c := newKeyCache(8, 64)
	k, priv := keyOf(1)
	msg := []byte("m")
	sig := ed25519.Sign(priv, msg)
	bad := append([]byte(nil), sig...)
	bad[40] ^= 1
	for range 3 {
		if c.verify(k, msg, bad) {
			t.Fatal("bad signature accepted")
		}
	}
	if c.len() != 0 {
		t.Fatal("bad signatures filled the cache")
	}
	if !c.verify(k, msg, sig) || c.len() != 0 {
		t.Fatalf("first valid signature: cache holds %d", c.len())
	}
	if c.verify(k, msg, bad) || c.len() != 0 {
		t.Fatal("a bad signature after one good admitted the key")
	}
	if !c.verify(k, msg, sig) || c.len() != 1 {
		t.Fatalf("second valid signature: cache holds %d", c.len())
	}
	before := c.snapshot()
	if !c.verify(k, msg, sig) || c.verify(k, msg, bad) {
		t.Fatal("expanded key changed a verdict")
	}
	if st := c.snapshot(); st.hits != before.hits+2 {
		t.Fatalf("hits %d, want %d", st.hits, before.hits+2)
	}
}

// TestKeyCacheFreshKeysDoNotEvict plays the outsider: fresh keys with one
// valid signature each, ten times the cache's size, evict nothing; keys
// used twice each, the cheapest way in, evict the attacker's own entries
// and no honest key used once per rotation of the hand.
func TestKeyCacheFreshKeysDoNotEvict(t *testing.T) {
	t.Parallel()
	const size = 32
	c := newKeyCache(size, 1024)
	msg := []byte("beat")
	type kp struct {
		k   PublicKey
		sig []byte
	}
	mk := func(i int) kp {
		k, priv := keyOf(i)
		return kp{k, ed25519.Sign(priv, msg)}
	}
	var honest []kp
	for i := range size / 2 {
		honest = append(honest, mk(i))
	}
	use := func() {
		for _, h := range honest {
			if !c.verify(h.k, msg, h.sig) {
				t.Fatal("honest signature refused")
			}
		}
	}
	for range 4 {
		use()
	}
	if c.len() != size/2 {
		t.Fatalf("cache holds %d honest keys, want %d", c.len(), size/2)
	}
	for i := range 10 * size {
		a := mk(1000 + i)
		if !c.verify(a.k, msg, a.sig) {
			t.Fatal("attacker's valid signature refused")
		}
	}
	if st := c.snapshot(); st.evicted != 0 || c.len() != size/2 {
		t.Fatalf("fresh keys used once: %d evicted, %d held", st.evicted, c.len())
	}
	// Keys used twice: an honest key used once per rotation of the hand
	// (here, once per size/2 admissions: the slots the attacker holds)
	// stays; the attacker's keys evict each other.
	for round := range 12 {
		for i := range size / 2 {
			a := mk(5000 + round*size + i)
			c.verify(a.k, msg, a.sig)
			c.verify(a.k, msg, a.sig)
		}
		for _, h := range honest {
			if _, ok := c.idx[h.k]; !ok {
				t.Fatalf("round %d: honest key evicted", round)
			}
		}
		use()
		if c.len() > size {
			t.Fatalf("cache holds %d, bound %d", c.len(), size)
		}
	}
	if st := c.snapshot(); st.evicted == 0 {
		t.Fatal("no eviction: the test did not fill the cache")
	}
}

// TestKeyCacheConcurrent: many goroutines on shared and own keys (run with
// -race) get crypto/ed25519's verdicts and keep the bound.
func TestKeyCacheConcurrent(t *testing.T) {
	t.Parallel()
	c := newKeyCache(16, 64)
	msg := []byte("m")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				k, priv := keyOf(i%24 + g%2*100)
				sig := ed25519.Sign(priv, msg)
				if i%3 == 0 {
					sig[0] ^= 1
				}
				if c.verify(k, msg, sig) != (i%3 != 0) {
					t.Error("wrong verdict")
				}
			}
		})
	}
	wg.Wait()
	if c.len() > 16 {
		t.Fatalf("cache holds %d", c.len())
	}
}

// TestKeyCacheDoorkeeperIsBounded: the doorkeeper holds at most its size
// in fingerprints and forgets the oldest first, so a key whose first
// signature was pushed out is not admitted on its next one.
func TestKeyCacheDoorkeeperIsBounded(t *testing.T) {
	t.Parallel()
	const door = 8
	c := newKeyCache(4, door)
	msg := []byte("m")
	sign := func(i int) (PublicKey, []byte) {
		k, priv := keyOf(20000 + i)
		return k, ed25519.Sign(priv, msg)
	}
	for i := range 3 * door {
		k, sig := sign(i)
		if !c.verify(k, msg, sig) {
			t.Fatal("refused")
		}
		if len(c.door) > door || len(c.ring) != door {
			t.Fatalf("doorkeeper holds %d, bound %d", len(c.door), door)
		}
	}
	k, sig := sign(0) // forgotten: seen again, it is remembered, not admitted
	if !c.verify(k, msg, sig) || c.len() != 0 {
		t.Fatalf("cache holds %d after a forgotten key's second signature", c.len())
	}
	k, sig = sign(3*door - 1) // the newest: admitted
	if !c.verify(k, msg, sig) || c.len() != 1 {
		t.Fatalf("cache holds %d after a remembered key's second signature", c.len())
	}
}
