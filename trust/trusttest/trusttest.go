// Package trusttest builds, for tests and attack simulations, what an
// attacker can build by hand against package trust: tokens that break its
// rules. It uses only trust's exported API and wire form (trust/trustpb,
// the domains in package wire), as an attacker would; nothing in it is a
// shortcut into trust's internals. Production code never imports it.
package trusttest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"time"

	"filippo.io/edwards25519"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
)

// ForgeDelegation returns t extended by one link to to, granting g, signed
// by signer WITHOUT any of Token.Delegate's checks: scopes may widen,
// expiry may grow, signer need not be t's holder. It is what an attacker
// with an identity key can always build by hand: every verifier rejects it
// unless the link happens to obey the rules. t is not modified.
//
// The link is laid out as Delegate lays one out: a fresh random nonce, the
// times truncated to the second, a not-before of now when g has none, and
// the delegatable scopes as a mask over g.Scopes (one that is not among
// g.Scopes is dropped). Its ID is the one every verifier derives, from t's
// holder, whoever signed.
//
// It panics when the result does not decode as a token (to is a
// small-order key, or g has more than trust.MaxScopes scopes): no
// *trust.Token can hold that. ForgeDelegationBytes builds those too.
func ForgeDelegation(t *trust.Token, signer *trust.Identity, to trust.PublicKey, g trust.Grant, now time.Time) *trust.Token {
	p := forge(t, signer, to, g, now)
	out, err := trust.TokenFromProto(p)
	if err != nil {
		panic(fmt.Sprintf("trusttest: the forged token does not decode (%v): use ForgeDelegationBytes", err))
	}
	return out
}

// ForgeDelegationBytes returns the encoded token that ForgeDelegation
// makes, for any input: also one that does not decode, to be sent as
// bytes.
func ForgeDelegationBytes(t *trust.Token, signer *trust.Identity, to trust.PublicKey, g trust.Grant, now time.Time) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(forge(t, signer, to, g, now))
	if err != nil { // cannot happen: every field is valid protobuf
		panic(err)
	}
	return b
}

// forge returns t's wire form with the forged link appended.
func forge(t *trust.Token, signer *trust.Identity, to trust.PublicKey, g trust.Grant, now time.Time) *trustpb.Token {
	var mask uint64
	for _, d := range g.Delegatable {
		for j, s := range g.Scopes {
			if s == d {
				mask |= 1 << uint(j)
				break
			}
		}
	}
	nb := g.NotBefore
	if nb.IsZero() {
		nb = now
	}
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce) // crypto/rand crashes rather than fail since Go 1.24
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.LinkBody{
		Holder: to[:], Scopes: g.Scopes, Delegatable: mask,
		NotBefore: nb.Truncate(time.Second).Unix(), Expires: g.Expires.Truncate(time.Second).Unix(), Id: nonce,
	})
	if err != nil { // cannot happen: every field is valid protobuf
		panic(err)
	}
	p := t.Proto()
	prev := chainHash(p)
	sig := signer.Sign(wire.DomainLink, append(prev[:], body...))
	p.Links = append(p.Links, &trustpb.Signed{Body: body, Signature: sig})
	return p
}

// chainHash is the hash every link's signature covers before its body:
// sha256(wire.DomainRoot || anchor), then for each link
// sha256(previous || uvarint(len(body)) || body || signature).
func chainHash(p *trustpb.Token) [32]byte {
	h := sha256.New()
	h.Write([]byte(wire.DomainRoot))
	h.Write(p.Anchor)
	var out [32]byte
	h.Sum(out[:0])
	for _, l := range p.Links {
		h.Reset()
		h.Write(out[:])
		h.Write(binary.AppendUvarint(nil, uint64(len(l.Body))))
		h.Write(l.Body)
		h.Write(l.Signature)
		h.Sum(out[:0])
	}
	return out
}

// TorsionSignature signs domain||msg as id, with a point of order 8 added
// to R: S = r + H(R' || A || M)·a for R' = rB + T. The cofactored equation
// (RFC 8032's, and every batch verifier's) accepts it; crypto/ed25519's
// cofactorless one, which trust keeps, refuses it. Only the holder of a
// key can build one: it is what a malicious insider would send to split
// nodes that verify differently.
func TorsionSignature(id *trust.Identity, domain string, msg []byte) []byte {
	raw, err := id.Libp2pKey().Raw()
	if err != nil {
		panic(err)
	}
	h := sha512.Sum512(raw[:32])
	a, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		panic(err)
	}
	var nonce [64]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(err)
	}
	r, _ := edwards25519.NewScalar().SetUniformBytes(nonce[:])
	// The y of a point of order 8 (libsodium's blocklist).
	t8, err := new(edwards25519.Point).SetBytes([]byte{0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0,
		0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05})
	if err != nil {
		panic(err)
	}
	R := new(edwards25519.Point).ScalarBaseMult(r)
	R.Add(R, t8)
	pub := id.Public()
	kh := sha512.New()
	kh.Write(R.Bytes())
	kh.Write(pub[:])
	kh.Write([]byte(domain))
	kh.Write(msg)
	k, _ := edwards25519.NewScalar().SetUniformBytes(kh.Sum(nil))
	S := edwards25519.NewScalar().MultiplyAdd(k, a, r)
	return append(R.Bytes(), S.Bytes()...)
}
