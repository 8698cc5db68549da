package trust

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sameAsStdlib fails t unless expandKey(priv) signs domain‖msg exactly as
// crypto/ed25519 does, and returns the signature.
func sameAsStdlib(t testing.TB, priv ed25519.PrivateKey, domain string, msg []byte) []byte {
	t.Helper()
	want := ed25519.Sign(priv, append([]byte(domain), msg...))
	if got := expandKey(priv).sign(domain, msg); !bytes.Equal(got, want) {
		t.Fatalf("signature of %q‖%x under %x: %x, crypto/ed25519: %x", domain, msg, priv.Public(), got, want)
	}
	return want
}

// TestSignRFC8032: every signature of sign.input (the first three are RFC
// 8032's TEST 1–3), made again from its private key, is the vector's,
// byte for byte, with the message whole and split at every offset into
// domain and message.
func TestSignRFC8032(t *testing.T) {
	t.Parallel()
	lines := strings.Split(strings.TrimSpace(string(readGzip(t, "sign.input.gz"))), "\n")
	if len(lines) != 128 {
		t.Fatalf("%d lines", len(lines))
	}
	for i, line := range lines {
		f := strings.Split(line, ":")
		priv, msg, sig := ed25519.PrivateKey(unhex(t, f[0])), unhex(t, f[2]), unhex(t, f[3])[:64]
		if i == 0 && f[1] != "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" {
			t.Fatal("first vector is not RFC 8032 TEST 1")
		}
		for k := 0; k <= len(msg); k++ {
			if got := sameAsStdlib(t, priv, string(msg[:k]), msg[k:]); !bytes.Equal(got, sig) {
				t.Fatalf("vector %d: %x, want %x", i, got, sig)
			}
		}
	}
}

// TestSignWycheproof: every valid Wycheproof EdDSA signature, made again
// from its group's private key, is the vector's.
func TestSignWycheproof(t *testing.T) {
	t.Parallel()
	var file struct {
		TestGroups []struct {
			Key   struct{ SK, PK string }
			Tests []struct {
				TcID     int
				Msg, Sig string
				Result   string
			}
		}
	}
	if err := json.Unmarshal(readGzip(t, "eddsa_test.json.gz"), &file); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range file.TestGroups {
		priv := ed25519.NewKeyFromSeed(unhex(t, g.Key.SK))
		if !bytes.Equal(priv[32:], unhex(t, g.Key.PK)) {
			t.Fatal("sk and pk do not match")
		}
		for _, tc := range g.Tests {
			if tc.Result != "valid" {
				continue
			}
			if got := sameAsStdlib(t, priv, "", unhex(t, tc.Msg)); !bytes.Equal(got, unhex(t, tc.Sig)) {
				t.Fatalf("test %d: %x, want %s", tc.TcID, got, tc.Sig)
			}
			n++
		}
	}
	if n < 10 {
		t.Fatalf("%d valid vectors", n)
	}
}

// TestSignKeyRoles: what Identity and AnchorKey sign (generated, loaded
// from a key file, wrapped from libp2p) is crypto/ed25519's signature
// of domain‖msg, and verifies.
func TestSignKeyRoles(t *testing.T) {
	t.Parallel()
	id, err := GenerateIdentity(bytes.NewReader(bytes.Repeat([]byte{3}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "id.key")
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := IdentityFromLibp2p(id.Libp2pKey())
	if err != nil {
		t.Fatal(err)
	}
	an, err := GenerateAnchorKey(bytes.NewReader(bytes.Repeat([]byte{4}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("message")
	for _, kp := range []keyPair{id.kp, loaded.kp, wrapped.kp, an.kp} {
		want := ed25519.Sign(kp.priv, append([]byte(DomainLink), msg...))
		got := kp.sign(DomainLink, msg)
		if !bytes.Equal(got, want) {
			t.Fatalf("%x, want %x", got, want)
		}
		if !kp.pub.Verify(DomainLink, msg, got) {
			t.Fatal("does not verify")
		}
	}
	if got := id.Sign(DomainCredential, msg); !bytes.Equal(got, ed25519.Sign(id.kp.priv, append([]byte(DomainCredential), msg...))) {
		t.Fatal("Identity.Sign differs")
	}
}

// TestExpandedKeyClear: clear leaves no secret, and a printed key shows
// none (the secrets are unexported and never formatted by this package,
// but %v of a keyPair must not show them either).
func TestExpandedKeyClear(t *testing.T) {
	t.Parallel()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32))
	x := expandKey(priv)
	h := sha512.Sum512(priv[:32])
	if !bytes.Equal(x.prefix[:], h[32:]) {
		t.Fatal("prefix")
	}
	x.clear()
	var a [32]byte
	if err := x.a.ToBytes(a[:]); err != nil || a != [32]byte{} || x.prefix != [32]byte{} {
		t.Fatal("clear left secrets")
	}
}

// FuzzSignDifferential: for any seed, domain and message, the signature
// of domain‖msg is crypto/ed25519's byte for byte, also when the private
// key's public half is not the seed's (a key file can hold any 64 bytes;
// crypto/ed25519 hashes them as they are). Seeds:
// testdata/fuzz/FuzzSignDifferential (written with -update).
func FuzzSignDifferential(f *testing.F) {
	for _, s := range signSeeds() {
		f.Add(s.seed, s.domain, s.msg, s.wrongPub)
	}
	f.Fuzz(func(t *testing.T, seed []byte, domain string, msg []byte, wrongPub bool) {
		var s [32]byte
		copy(s[:], seed)
		priv := ed25519.NewKeyFromSeed(s[:])
		if wrongPub {
			h := sha512.Sum512(seed)
			copy(priv[32:], h[:32])
		}
		sameAsStdlib(t, priv, domain, msg)
	})
}

type signSeed struct {
	seed     []byte
	domain   string
	msg      []byte
	wrongPub bool
}

func signSeeds() []signSeed {
	return []signSeed{
		{nil, "", nil, false},
		{bytes.Repeat([]byte{0xff}, 32), DomainLink, []byte("message"), false},
		{[]byte("seed"), DomainCredential, bytes.Repeat([]byte{0}, 200), false},
		{[]byte("another seed"), "", bytes.Repeat([]byte{0xa5}, 1000), true},
		{bytes.Repeat([]byte{1}, 40), DomainRevocation, []byte{}, true},
	}
}

// TestSignSeedCorpus writes (with -update) and checks the seed corpus of
// FuzzSignDifferential.
func TestSignSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzSignDifferential")
	if *update {
		for i, s := range signSeeds() {
			b := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nstring(%q)\n[]byte(%q)\nbool(%v)\n", s.seed, s.domain, s.msg, s.wrongPub)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) < len(signSeeds()) {
		t.Fatalf("seed corpus: %d files, %v", len(ents), err)
	}
}
