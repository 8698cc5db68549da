package trust

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/meshagent/meshagent/trust/trustpb"
	"google.golang.org/protobuf/proto"
)

// smallOrderEncodings returns every 32-byte string that decodes to a point
// of small order: the libsodium blocklist (the y of the eight small-order
// points, 0, 1, p-1 and the two y of order 8, plus the non-canonical p and
// p+1), each with the sign bit clear and set. 14 strings, 8 of them the
// canonical encodings of the 8 points.
func smallOrderEncodings() [][32]byte {
	ys := append([][32]byte(nil), smallOrderY[:]...)
	p := [32]byte{0xed}
	for i := 1; i < 31; i++ {
		p[i] = 0xff
	}
	p[31] = 0x7f
	p1 := p
	p1[0] = 0xee
	ys = append(ys, p, p1)
	var out [][32]byte
	for _, y := range ys {
		out = append(out, y)
		y[31] |= 0x80
		out = append(out, y)
	}
	return out
}

// trivialForgery looks for a message (domain || 8-byte counter) and a
// signature (R, S = 0) with R a small-order point that crypto/ed25519
// accepts for key. It returns the message and signature, or nil.
func trivialForgery(key []byte, domain string, rs [][]byte) (msg []byte, sig []byte) {
	for i := uint64(0); i < 256; i++ {
		m := binary.BigEndian.AppendUint64(nil, i)
		for _, r := range rs {
			s := append(append([]byte(nil), r...), make([]byte, 32)...)
			if ed25519.Verify(key, append([]byte(domain), m...), s) {
				return m, s
			}
		}
	}
	return nil, nil
}

// TestSmallOrderKeysRefused: each encoding of a small-order point is one
// for which anyone can sign (the trivial signature verifies under
// crypto/ed25519), and each is refused wherever a key is accepted.
func TestSmallOrderKeysRefused(t *testing.T) {
	t.Parallel()
	encs := smallOrderEncodings()
	if len(encs) != 14 {
		t.Fatalf("%d encodings, want 14", len(encs))
	}
	identity := edwards25519.NewIdentityPoint()
	canonical := map[[32]byte]bool{}
	for _, e := range encs {
		p, err := new(edwards25519.Point).SetBytes(e[:])
		if err != nil {
			t.Fatalf("%x does not decode: %v", e, err)
		}
		if new(edwards25519.Point).MultByCofactor(p).Equal(identity) != 1 {
			t.Fatalf("%x: 8P is not the identity", e)
		}
		canonical[[32]byte(p.Bytes())] = true
	}
	if len(canonical) != 8 {
		t.Fatalf("%d distinct points, want 8", len(canonical))
	}
	var rs [][]byte
	for r := range canonical {
		rs = append(rs, r[:])
	}

	a := testAnchor(t, 1)
	id := testIdentity(t, 2)
	tok, _ := IssueToken(a, id.Public(), Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	g := Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}
	for _, e := range encs {
		k := PublicKey(e)
		t.Run(k.String(), func(t *testing.T) {
			t.Parallel()
			// Without the refusal, anyone could sign as k.
			msg, sig := trivialForgery(e[:], DomainLink, rs)
			if sig == nil {
				t.Fatal("no trivial signature verifies: the key would not be weak")
			}
			if k.Verify(DomainLink, msg, sig) {
				t.Error("PublicKey.Verify accepts the trivial signature")
			}
			if !k.Weak() {
				t.Error("Weak() is false")
			}
			if _, err := PublicKeyFromBytes(e[:]); CodeOf(err) != CodeWeakKey {
				t.Errorf("PublicKeyFromBytes: %v", err)
			}
			pid := peer.ID(ed25519PeerIDPrefix + string(e[:]))
			if _, err := PublicKeyFromPeerID(pid); CodeOf(err) != CodeWeakKey {
				t.Errorf("PublicKeyFromPeerID: %v", err)
			}
			if _, err := ParsePublicKey(pid.String()); CodeOf(err) != CodeWeakKey {
				t.Errorf("ParsePublicKey: %v", err)
			}
			if _, err := NewVerifier(DefaultPolicy(a.Public(), k)); err == nil {
				t.Error("NewVerifier accepts it as an anchor")
			}
			if _, err := IssueToken(a, k, g, t0); !refusedWeak(err, k) {
				t.Errorf("IssueToken to it: %v", err)
			}
			if _, err := tok.Delegate(id, k, g, t0); !refusedWeak(err, k) {
				t.Errorf("Delegate to it: %v", err)
			}
			if _, err := IssueCredential(a, k, "weak", t0, time.Hour); !refusedWeak(err, k) {
				t.Errorf("IssueCredential for it: %v", err)
			}
			if _, err := RevokeAgent(a, k, t0, t0, time.Hour); !refusedWeak(err, k) {
				t.Errorf("RevokeAgent of it: %v", err)
			}
			// On the wire: as a link holder, a token anchor, a credential
			// subject and issuer.
			w := tok.Proto()
			var lb trustpb.LinkBody
			_ = proto.Unmarshal(tok.Links[0].body, &lb)
			lb.Holder = e[:]
			w.Links[0].Body, _ = proto.Marshal(&lb)
			if _, err := TokenFromProto(w); CodeOf(err) != CodeWeakKey {
				t.Errorf("token with it as holder: %v", err)
			}
			w = tok.Proto()
			w.Anchor = e[:]
			if _, err := TokenFromProto(w); CodeOf(err) != CodeWeakKey {
				t.Errorf("token with it as anchor: %v", err)
			}
			for _, field := range []string{"subject", "issuer"} {
				c, _ := IssueCredential(a, id.Public(), "x", t0, time.Hour)
				var cb trustpb.CredentialBody
				_ = proto.Unmarshal(c.body, &cb)
				if field == "subject" {
					cb.Subject = e[:]
				} else {
					cb.Issuer = e[:]
				}
				body, _ := proto.Marshal(&cb)
				if _, err := CredentialFromProto(&trustpb.Signed{Body: body, Signature: c.sig}); CodeOf(err) != CodeWeakKey {
					t.Errorf("credential with it as %s: %v", field, err)
				}
			}
		})
	}
}

// TestWeakHolderCannotBeSignedFor plays the attack: an anchor is made to
// grant a token to the identity point (for which S = 0 and R = the
// identity verify any message), and an attacker with no key delegates it
// to herself. The chain is refused on the wire (the holder is malformed)
// and, built in memory past the parser, by the signature check.
func TestWeakHolderCannotBeSignedFor(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	weak := PublicKey{1}
	l, err := linkOf(weak, Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, 1, t0)
	if err != nil {
		t.Fatal(err)
	}
	l.sig = f.anchor.kp.sign(DomainLink, linkMessage(rootHash(f.anchor.Public()), l.body))
	granted := &Token{Anchor: f.anchor.Public(), Links: []*Link{l}}
	trivial := append([]byte{1}, make([]byte, 63)...) // R = identity, S = 0
	forged := craft(t, granted, func([]byte) []byte { return trivial }, f.mallory.Public(),
		Grant{Scopes: []string{"read:logs"}, NotBefore: t0, Expires: t0.Add(time.Hour)}, 0)
	if !ed25519.Verify(weak[:], append([]byte(DomainLink), linkMessage(granted.chainHash(), forged.Leaf().body)...), trivial) {
		t.Fatal("crypto/ed25519 refuses the trivial signature: the attack would not work anyway")
	}
	_, err = ParseToken(forged.Bytes(), DefaultMaxTokenSize)
	wantCode(t, err, CodeWeakKey)
	wantCode(t, f.v.Authorize(forged, f.mallory.Public(), "read:logs", t0.Add(time.Minute)), CodeBadSignature)
}

// TestWeakMatchesCofactorCheck: Weak agrees with 8P == identity on ordinary
// keys, on keys with a small-order component added (mixed order: not weak)
// and on the small-order encodings.
func TestWeakMatchesCofactorCheck(t *testing.T) {
	t.Parallel()
	identity := edwards25519.NewIdentityPoint()
	torsion, _ := new(edwards25519.Point).SetBytes(smallOrderY[3][:]) // order 8
	var keys [][32]byte
	for i := 0; i < 64; i++ {
		seed := sha256.Sum256([]byte{byte(i)})
		pub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
		keys = append(keys, [32]byte(pub))
		p, _ := new(edwards25519.Point).SetBytes(pub)
		keys = append(keys, [32]byte(new(edwards25519.Point).Add(p, torsion).Bytes()))
	}
	keys = append(keys, smallOrderEncodings()...)
	for _, k := range keys {
		p, err := new(edwards25519.Point).SetBytes(k[:])
		if err != nil {
			t.Fatalf("%x does not decode", k)
		}
		small := new(edwards25519.Point).MultByCofactor(p).Equal(identity) == 1
		if PublicKey(k).Weak() != small {
			t.Fatalf("%x: Weak() = %v, 8P == identity is %v", k, !small, small)
		}
		if _, err := PublicKeyFromBytes(k[:]); (err != nil) != small {
			t.Fatalf("%x: PublicKeyFromBytes: %v", k, err)
		}
	}
}

// TestParsePublicKeyRefusesNonPoints: operator input that is not a curve
// point is refused at once (the wire path leaves it to the signature
// check, which no signature passes).
func TestParsePublicKeyRefusesNonPoints(t *testing.T) {
	t.Parallel()
	var notPoint [32]byte
	for i := byte(2); ; i++ { // y = i: find one whose x^2 is not a square
		notPoint[0] = i
		if _, err := new(edwards25519.Point).SetBytes(notPoint[:]); err != nil {
			break
		}
	}
	s := peer.ID(ed25519PeerIDPrefix + string(notPoint[:])).String()
	if _, err := ParsePublicKey(s); CodeOf(err) != CodeMalformed {
		t.Fatalf("ParsePublicKey(%x): %v", notPoint, err)
	}
	if _, err := NewVerifier(DefaultPolicy(PublicKey(notPoint))); err == nil {
		t.Fatal("NewVerifier accepts a non-point anchor")
	}
	if _, err := PublicKeyFromBytes(notPoint[:]); err != nil {
		t.Fatalf("PublicKeyFromBytes refuses a non-point (the wire path does not decode): %v", err)
	}
}

// refusedWeak reports whether err refuses a small-order key: weak_key, or
// malformed for the all-zero encoding, which is refused as no key at all.
func refusedWeak(err error, k PublicKey) bool {
	if k.IsZero() {
		return CodeOf(err) == CodeMalformed
	}
	return CodeOf(err) == CodeWeakKey
}
