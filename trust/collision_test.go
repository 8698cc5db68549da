package trust

import (
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust/trustpb"
	"google.golang.org/protobuf/proto"
)

// withLeafBody returns tok with its leaf's body replaced by body and signed
// by sign after the chain before it, as any delegator can build by hand,
// decoded from the wire so that every field and ID is what a verifier sees.
func withLeafBody(t *testing.T, tok *Token, body []byte, sign func([]byte) []byte) *Token {
	t.Helper()
	prefix := &Token{Anchor: tok.Anchor, Links: tok.Links[:len(tok.Links)-1]}
	p := tok.Proto()
	p.Links[len(p.Links)-1] = &trustpb.Signed{Body: body, Signature: sign(linkMessage(prefix.chainHash(), body))}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ParseToken(b, DefaultMaxTokenSize)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// withNonce returns body with its nonce (LinkBody.id) set to nonce.
func withNonce(t *testing.T, body []byte, nonce [16]byte) []byte {
	t.Helper()
	var b trustpb.LinkBody
	if err := proto.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	b.Id = nonce[:]
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// infoID returns the ID of link i as `meshagent token inspect` shows it,
// parsed back as the operator's `ca revoke --token` does.
func infoID(t *testing.T, tok *Token, i int) LinkID {
	t.Helper()
	id, err := ParseLinkID(tok.Info().Links[i].ID)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// mustRevoke returns a func that takes what a Revoke function returns and
// fails t on its error.
func mustRevoke(t *testing.T) func(*Revocation, error) *Revocation {
	return func(r *Revocation, err error) *Revocation {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
}

// applyThroughWire sends r through its encoding and applies it to v.
func applyThroughWire(t *testing.T, v *Verifier, r *Revocation) {
	t.Helper()
	pr, err := ParseRevocation(r.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, v.AddRevocation(pr, t0), "")
}

// TestRevokingAnAttackersLinkSparesTheVictim plays the collision of issue
// 10 item 7: mallory, who holds a token of her own, builds a delegation
// whose chosen bytes equal a victim's credential serial, a victim's link ID
// or a victim's whole link body. The operator revokes mallory's link by the
// ID that inspect shows: her chain is revoked, the victim's credential and
// chain are not.
func TestRevokingAnAttackersLinkSparesTheVictim(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	cred, err := IssueCredential(f.anchor, f.carol.Public(), "carol", t0, DefaultCredentialTTL)
	if err != nil {
		t.Fatal(err)
	}
	eve := testIdentity(t, 25)
	malTok, err := IssueToken(f.anchor, f.mallory.Public(), Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(2 * time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	toEve, err := malTok.Delegate(f.mallory, eve.Public(), Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	mallorySigns := func(m []byte) []byte { return f.mallory.Sign(DomainLink, m) }
	victimLinks := f.toCar.Links
	for _, c := range []struct {
		name   string
		body   []byte
		holder *Identity
	}{
		{"nonce is the victim's credential serial", withNonce(t, toEve.Leaf().body, cred.Serial), eve},
		{"nonce is the victim's link ID", withNonce(t, toEve.Leaf().body, [16]byte(infoID(t, f.toCar, 1))), eve},
		{"nonce is the victim's link nonce", withNonce(t, toEve.Leaf().body, victimLinks[2].nonce), eve},
		{"body copied from the victim's link", victimLinks[2].body, f.carol},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			atk := withLeafBody(t, toEve, c.body, mallorySigns)
			v := testVerifier(t, f.anchor.Public())
			wantCode(t, v.Authorize(atk, c.holder.Public(), "read:logs", now), "")
			id := infoID(t, atk, 1)
			if [16]byte(id) == cred.Serial {
				t.Errorf("attacker's link ID %s is the victim's credential serial", id)
			}
			for i, l := range victimLinks {
				if id == l.ID {
					t.Errorf("attacker's link ID %s is the victim's link %d", id, i)
				}
			}
			applyThroughWire(t, v, mustRevoke(t)(RevokeLink(f.anchor, id, now, DefaultMaxTokenLife)))
			err := v.Authorize(atk, c.holder.Public(), "read:logs", now)
			wantCode(t, err, CodeRevoked)
			if err.(*Error).Link != 1 {
				t.Fatalf("revoked at link %d, want 1: %v", err.(*Error).Link, err)
			}
			wantCode(t, v.Authorize(malTok, f.mallory.Public(), "read:logs", now), "") // her own grant stands
			wantCode(t, v.VerifyCredential(cred, now), "")
			wantCode(t, v.Authorize(f.toCar, f.carol.Public(), "read:logs", now), "")
			wantCode(t, v.Authorize(f.toBob, f.bob.Public(), "read:logs", now), "")
		})
	}
}

// TestRevocationNamespaces: a link revocation never matches a credential and
// a credential revocation never matches a link, whatever their bytes.
func TestRevocationNamespaces(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.Add(time.Minute)
	cred, _ := IssueCredential(f.anchor, f.carol.Public(), "carol", t0, DefaultCredentialTTL)
	// A link whose nonce is the credential's serial.
	twin := withLeafBody(t, f.toCar, withNonce(t, f.toCar.Leaf().body, cred.Serial), func(m []byte) []byte { return f.bob.Sign(DomainLink, m) })
	wantCode(t, f.v.Authorize(twin, f.carol.Public(), "read:logs", now), "")

	t.Run("credential revocation spares the link", func(t *testing.T) {
		t.Parallel()
		v := testVerifier(t, f.anchor.Public())
		applyThroughWire(t, v, mustRevoke(t)(RevokeCredential(f.anchor, cred.Serial, now, DefaultMaxTokenLife)))
		wantCode(t, v.VerifyCredential(cred, now), CodeRevoked)
		wantCode(t, v.Authorize(twin, f.carol.Public(), "read:logs", now), "")
		wantCode(t, v.Authorize(f.toCar, f.carol.Public(), "read:logs", now), "")
	})
	t.Run("link revocation with the serial's bytes spares the credential", func(t *testing.T) {
		t.Parallel()
		v := testVerifier(t, f.anchor.Public())
		applyThroughWire(t, v, mustRevoke(t)(RevokeLink(f.anchor, LinkID(cred.Serial), now, DefaultMaxTokenLife)))
		wantCode(t, v.VerifyCredential(cred, now), "")
		wantCode(t, v.Authorize(twin, f.carol.Public(), "read:logs", now), "")
	})
	t.Run("credential revocation with a link ID's bytes spares the link", func(t *testing.T) {
		t.Parallel()
		v := testVerifier(t, f.anchor.Public())
		applyThroughWire(t, v, mustRevoke(t)(RevokeCredential(f.anchor, [16]byte(f.toCar.Links[1].ID), now, DefaultMaxTokenLife)))
		wantCode(t, v.Authorize(f.toCar, f.carol.Public(), "read:logs", now), "")
		wantCode(t, v.VerifyCredential(cred, now), "")
	})
}

// TestLinkIDIsDerived: the ID is the same whether the link was made here or
// decoded, is never the body's nonce, and is the documented hash.
func TestLinkIDIsDerived(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p, err := ParseToken(f.toCar.Bytes(), DefaultMaxTokenSize)
	if err != nil {
		t.Fatal(err)
	}
	prev, issuer := rootHash(f.anchor.Public()), f.anchor.Public()
	for i, l := range p.Links {
		if l.ID != f.toCar.Links[i].ID {
			t.Fatalf("link %d: decoded ID %s, made %s", i, l.ID, f.toCar.Links[i].ID)
		}
		if [16]byte(l.ID) == l.nonce {
			t.Fatalf("link %d: ID is the signer's nonce", i)
		}
		h := sha256.New()
		h.Write([]byte("meshagent/v1/link-id\x00"))
		h.Write(issuer[:])
		h.Write(prev[:])
		h.Write(l.body)
		if want := h.Sum(nil)[:16]; string(want) != string(l.ID[:]) {
			t.Fatalf("link %d: ID %s, want %x", i, l.ID, want)
		}
		prev, issuer = nextHash(prev, l.body, l.sig), l.Holder
	}
	// A forged link's ID: TestForgedLinkIDIsDerived in forged_test.go.
}

func TestRevocationWireFormat(t *testing.T) {
	t.Parallel()
	a := testAnchor(t, 20)
	agent := testIdentity(t, 21).Public()
	serial := [16]byte{1, 2, 3}
	link := LinkID{4, 5, 6}
	must := mustRevoke(t)
	for _, c := range []struct {
		name string
		r    *Revocation
	}{
		{"link", must(RevokeLink(a, link, t0, time.Hour))},
		{"credential", must(RevokeCredential(a, serial, t0, time.Hour))},
		{"agent", must(RevokeAgent(a, agent, t0, t0, time.Hour))},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p, err := ParseRevocation(c.r.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if p.LinkID != c.r.LinkID || p.Serial != c.r.Serial || p.Agent != c.r.Agent || !p.Before.Equal(c.r.Before) || p.ID != c.r.ID {
				t.Fatalf("round trip: %+v, want %+v", p, c.r)
			}
		})
	}
	if _, err := RevokeCredential(a, [16]byte{}, t0, time.Hour); CodeOf(err) != CodeMalformed {
		t.Fatalf("zero serial: %v", err)
	}

	sign := func(b *trustpb.RevocationBody) []byte {
		body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(b)
		out, _ := proto.Marshal(&trustpb.Signed{Body: body, Signature: a.kp.sign(DomainRevocation, body)})
		return out
	}
	base := func() *trustpb.RevocationBody {
		iss := a.Public()
		return &trustpb.RevocationBody{Version: 2, Issuer: iss[:], IssuedAt: t0.Unix(), KeepUntil: t0.Add(time.Hour).Unix(), Id: make([]byte, 16)}
	}
	weak := PublicKey{1} // the identity point
	for _, c := range []struct {
		name   string
		edit   func(b *trustpb.RevocationBody)
		detail string
	}{
		{"version 1", func(b *trustpb.RevocationBody) { b.Version = 1; b.LinkId = link[:] }, "version 1"},
		{"version 3", func(b *trustpb.RevocationBody) { b.Version = 3; b.LinkId = link[:] }, "version 3"},
		{"nothing named", func(b *trustpb.RevocationBody) {}, "exactly one"},
		{"link and serial", func(b *trustpb.RevocationBody) { b.LinkId = link[:]; b.CredentialSerial = serial[:] }, "exactly one"},
		{"serial and agent", func(b *trustpb.RevocationBody) { b.CredentialSerial = serial[:]; b.Agent = agent[:] }, "exactly one"},
		{"zero link ID", func(b *trustpb.RevocationBody) { b.LinkId = make([]byte, 16) }, "zero"},
		{"short serial", func(b *trustpb.RevocationBody) { b.CredentialSerial = serial[:15] }, "15 bytes"},
		{"weak agent", func(b *trustpb.RevocationBody) { b.Agent = weak[:] }, "small-order"},
		{"weak issuer", func(b *trustpb.RevocationBody) { b.Issuer = weak[:]; b.LinkId = link[:] }, "small-order"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := base()
			c.edit(b)
			_, err := ParseRevocation(sign(b))
			want := CodeMalformed
			switch {
			case strings.HasPrefix(c.name, "version"):
				want = CodeVersion // not the relaying node's fault in a mixed-version mesh
			case strings.HasPrefix(c.name, "weak"):
				want = CodeWeakKey // nor is a rule older nodes do not have
			}
			if CodeOf(err) != want || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("want %s saying %q, got %v", want, c.detail, err)
			}
		})
	}
}
