package trust

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
	"google.golang.org/protobuf/proto"
)

// Token limits and defaults.
const (
	DefaultMaxDepth     = 8    // links per chain
	DefaultMaxTokenSize = 4096 // encoded bytes
	tokenVersion        = 1
	PEMToken            = "MESHAGENT TOKEN"
	DefaultTokenTTL     = time.Hour
	DefaultMaxTokenLife = 30 * 24 * time.Hour
)

// LinkID identifies one link, for revocation. It is derived, never chosen:
// the first 16 bytes of SHA-256 over a domain string, the key that must
// sign the link (the anchor for link 0, the previous link's holder after)
// and the message that key signs (the chain hash of every link before it,
// then the link's body). So it names exactly one grant by one signer at one
// place in one chain: a signer cannot give its link the ID of another's
// link (copying the body under another signature or onto another chain
// gives another ID), nor of a credential serial, which revocations keep in
// a namespace of their own. Revoking it revokes that link and every chain
// built on it, nothing else. The 16 random bytes in the body are a nonce
// that makes two otherwise equal grants differ; they identify nothing.
type LinkID [16]byte

// String returns the ID in hex.
func (id LinkID) String() string { return hex.EncodeToString(id[:]) }

// ParseLinkID parses the hex form.
func ParseLinkID(s string) (LinkID, error) {
	var id LinkID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fail(CodeMalformed, -1, "link ID %q is not 32 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// Link is one signed link of a token. Link 0 is signed by the token's
// anchor; link i>0 by the holder of link i-1.
type Link struct {
	Holder      PublicKey
	Scopes      []string
	Delegatable []string // a subset of Scopes
	NotBefore   time.Time
	Expires     time.Time
	ID          LinkID // derived from the signer's key and the signed bytes: see LinkID

	nonce     [16]byte // the body's random bytes
	body, sig []byte   // exactly as signed / received
}

// Token is a capability token: a chain of links rooted in Anchor. Its value
// is what the leaf (last link) grants, to the leaf's holder only.
type Token struct {
	Anchor PublicKey
	Links  []*Link

	entry *chainEntry // set by Verifier.DecodeToken: see chaincache.go
}

// Grant is what a new link grants.
type Grant struct {
	Scopes      []string
	Delegatable []string  // must be a subset of Scopes
	NotBefore   time.Time // zero: the issue time
	Expires     time.Time // required
}

// Leaf returns the last link.
func (t *Token) Leaf() *Link { return t.Links[len(t.Links)-1] }

// Holder returns the leaf's holder: the only agent that may use the token.
func (t *Token) Holder() PublicKey { return t.Leaf().Holder }

// IssueToken signs a new one-link token for to.
func IssueToken(a *AnchorKey, to PublicKey, g Grant, now time.Time) (*Token, error) {
	l, err := newLink(to, g, now, 0)
	if err != nil {
		return nil, err
	}
	if err := checkLinkShape(l, 0); err != nil {
		return nil, err
	}
	t := &Token{Anchor: a.Public()}
	prev := rootHash(t.Anchor)
	l.ID = deriveLinkID(t.Anchor, prev, l.body)
	l.sig = a.kp.sign(wire.DomainLink, linkMessage(prev, l.body))
	t.Links = []*Link{l}
	return t, nil
}

// Delegate returns a new token that extends t by one link to to, signed by
// holder, who must be t's holder. It refuses (with CodeEscalation and a
// detail naming the widening) a grant with a scope the leaf may not
// delegate, a not-before earlier or an expiry later than the leaf's, and it
// enforces DefaultMaxDepth and DefaultMaxTokenSize. t is not modified.
func (t *Token) Delegate(holder *Identity, to PublicKey, g Grant, now time.Time) (*Token, error) {
	parent := t.Leaf()
	i := len(t.Links)
	if !holder.Public().Equal(parent.Holder) {
		return nil, fail(CodeNotHolder, i, "only the token's holder %s can delegate it, not %s", parent.Holder, holder.Public())
	}
	if i+1 > DefaultMaxDepth {
		return nil, fail(CodeTooDeep, i, "a chain may have at most %d links", DefaultMaxDepth)
	}
	if g.NotBefore.IsZero() && now.Before(parent.NotBefore) {
		g.NotBefore = parent.NotBefore
	}
	l, err := newLink(to, g, now, i)
	if err != nil {
		return nil, err
	}
	if err := checkLinkShape(l, i); err != nil {
		return nil, err
	}
	if err := checkNarrowing(parent, l, i); err != nil {
		return nil, err
	}
	prev := t.chainHash()
	l.ID = deriveLinkID(parent.Holder, prev, l.body)
	l.sig = holder.kp.sign(wire.DomainLink, linkMessage(prev, l.body))
	nt := &Token{Anchor: t.Anchor, Links: append(append([]*Link(nil), t.Links...), l)}
	if n := len(nt.Bytes()); n > DefaultMaxTokenSize {
		return nil, fail(CodeTooLarge, i, "token would be %d bytes, at most %d", n, DefaultMaxTokenSize)
	}
	return nt, nil
}

func newLink(to PublicKey, g Grant, now time.Time, i int) (*Link, error) {
	if to.IsZero() {
		return nil, fail(CodeMalformed, i, "no holder")
	}
	if err := to.checkWeak(); err != nil {
		return nil, withLink(err, i)
	}
	if err := validateScopeList(g.Scopes, i); err != nil {
		return nil, err
	}
	var mask uint64
	for _, d := range g.Delegatable {
		j := indexOf(g.Scopes, d)
		if j < 0 {
			if err := ValidateScope(d); err != nil {
				return nil, withLink(err, i)
			}
			return nil, fail(CodeEscalation, i, "delegatable scope %q is not among the link's own scopes", d)
		}
		mask |= 1 << uint(j)
	}
	return linkOf(to, g, mask, now)
}

// linkOf builds the unsigned link of g for to, delegatable scopes given as
// a mask over g.Scopes, without any check: newLink checks g first.
func linkOf(to PublicKey, g Grant, mask uint64, now time.Time) (*Link, error) {
	nb := g.NotBefore
	if nb.IsZero() {
		nb = now
	}
	l := &Link{Holder: to, Scopes: append([]string(nil), g.Scopes...), NotBefore: nb.Truncate(time.Second), Expires: g.Expires.Truncate(time.Second)}
	l.Delegatable = maskScopes(l.Scopes, mask)
	if _, err := rand.Read(l.nonce[:]); err != nil {
		return nil, err
	}
	l.body = encodeLinkBody(l, mask)
	return l, nil
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func maskScopes(scopes []string, mask uint64) []string {
	var out []string
	for i, s := range scopes {
		if mask&(1<<uint(i)) != 0 {
			out = append(out, s)
		}
	}
	return out
}

// checkLinkShape checks the rules one link must meet on its own.
func checkLinkShape(l *Link, i int) error {
	if err := validateScopeList(l.Scopes, i); err != nil {
		return err
	}
	if !l.NotBefore.Before(l.Expires) {
		return fail(CodeMalformed, i, "expiry %s is not after not-before %s", l.Expires.UTC().Format(time.RFC3339), l.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkNarrowing checks that child (link i) grants no more than parent
// allowed it to: scopes within the parent's delegatable scopes, and a
// validity window inside the parent's.
func checkNarrowing(parent, child *Link, i int) error {
	for _, s := range child.Scopes {
		if !contains(parent.Delegatable, s) {
			if contains(parent.Scopes, s) {
				return fail(CodeEscalation, i, "scope %q is held by the parent but not delegatable", s)
			}
			return fail(CodeEscalation, i, "scope %q is not granted by the parent", s)
		}
	}
	if child.Expires.After(parent.Expires) {
		return fail(CodeEscalation, i, "expiry %s is later than the parent's %s", child.Expires.UTC().Format(time.RFC3339), parent.Expires.UTC().Format(time.RFC3339))
	}
	if child.NotBefore.Before(parent.NotBefore) {
		return fail(CodeEscalation, i, "not-before %s is earlier than the parent's %s", child.NotBefore.UTC().Format(time.RFC3339), parent.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// rootHash is the chain hash before link 0: it binds link 0 to the anchor.
func rootHash(anchor PublicKey) [32]byte {
	h := sha256.New()
	h.Write([]byte(wire.DomainRoot))
	h.Write(anchor[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// nextHash chains one more link: sha256(prev || len(body) || body || sig).
// It names a link together with everything before it, so it keys the cache
// of verified signatures.
func nextHash(prev [32]byte, body, sig []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(body)))])
	h.Write(body)
	h.Write(sig)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// deriveLinkID returns the ID of a link with body that issuer must sign
// after the chain hash prev: see LinkID.
func deriveLinkID(issuer PublicKey, prev [32]byte, body []byte) LinkID {
	h := sha256.New()
	h.Write([]byte(wire.DomainLinkID))
	h.Write(issuer[:])
	h.Write(prev[:])
	h.Write(body)
	var sum [32]byte
	h.Sum(sum[:0])
	return LinkID(sum[:16])
}

// linkMessage is what a link's signature covers (after wire.DomainLink): the
// chain hash of everything before it, then its body. A link therefore
// cannot be cut out of one chain and spliced into another.
func linkMessage(prev [32]byte, body []byte) []byte {
	m := make([]byte, 0, 32+len(body))
	m = append(m, prev[:]...)
	return append(m, body...)
}

func (t *Token) chainHash() [32]byte {
	h := rootHash(t.Anchor)
	for _, l := range t.Links {
		h = nextHash(h, l.body, l.sig)
	}
	return h
}

// Proto returns the wire form.
func (t *Token) Proto() *trustpb.Token {
	p := &trustpb.Token{Version: tokenVersion, Anchor: t.Anchor[:], Links: make([]*trustpb.Signed, len(t.Links))}
	for i, l := range t.Links {
		p.Links[i] = &trustpb.Signed{Body: l.body, Signature: l.sig}
	}
	return p
}

// Bytes returns the encoded token.
func (t *Token) Bytes() []byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(t.Proto())
	return b
}

// ParseToken decodes an encoded token of at most maxSize bytes (no
// signature or rule check: see Verifier.Authorize).
func ParseToken(b []byte, maxSize int) (*Token, error) {
	if len(b) > maxSize {
		return nil, fail(CodeTooLarge, -1, "token is %d bytes, at most %d", len(b), maxSize)
	}
	var p trustpb.Token
	if err := proto.Unmarshal(b, &p); err != nil {
		return nil, fail(CodeMalformed, -1, "token: %v", err)
	}
	return TokenFromProto(&p)
}

// TokenFromProto converts a decoded wire token. The caller bounds its size.
func TokenFromProto(p *trustpb.Token) (*Token, error) {
	if p == nil {
		return nil, fail(CodeMalformed, -1, "no token")
	}
	if p.Version == 0 {
		return nil, fail(CodeMalformed, -1, "token has no version")
	}
	if p.Version != tokenVersion {
		return nil, fail(CodeVersion, -1, "token version %d not supported", p.Version)
	}
	anchor, err := PublicKeyFromBytes(p.Anchor)
	if err != nil {
		return nil, err
	}
	if len(p.Links) == 0 {
		return nil, fail(CodeMalformed, -1, "token has no links")
	}
	t := &Token{Anchor: anchor, Links: make([]*Link, len(p.Links))}
	prev, issuer := rootHash(anchor), anchor
	for i, s := range p.Links {
		if s == nil {
			return nil, fail(CodeMalformed, i, "empty link")
		}
		l, err := parseLink(s.Body, s.Signature, i)
		if err != nil {
			return nil, err
		}
		l.ID = deriveLinkID(issuer, prev, l.body)
		t.Links[i] = l
		prev, issuer = nextHash(prev, l.body, l.sig), l.Holder
	}
	return t, nil
}

func parseLink(body, sig []byte, i int) (*Link, error) {
	var b trustpb.LinkBody
	if err := proto.Unmarshal(body, &b); err != nil {
		return nil, fail(CodeMalformed, i, "link body: %v", err)
	}
	holder, err := PublicKeyFromBytes(b.Holder)
	if err != nil {
		e := err.(*Error) // malformed or weak_key
		return nil, fail(e.Code, i, "holder: %s", e.Detail)
	}
	if len(b.Id) != len(LinkID{}) {
		return nil, fail(CodeMalformed, i, "link nonce is %d bytes, want 16", len(b.Id))
	}
	if len(b.Scopes) > MaxScopes {
		return nil, fail(CodeMalformed, i, "%d scopes, at most %d", len(b.Scopes), MaxScopes)
	}
	if b.Delegatable>>uint(len(b.Scopes)) != 0 {
		return nil, fail(CodeMalformed, i, "delegatable mask names scopes the link does not have")
	}
	l := &Link{Holder: holder, Scopes: b.Scopes, Delegatable: maskScopes(b.Scopes, b.Delegatable),
		NotBefore: time.Unix(b.NotBefore, 0), Expires: time.Unix(b.Expires, 0), body: body, sig: sig}
	copy(l.nonce[:], b.Id)
	return l, nil
}

// TokenInfo is the JSON view of a token, for `meshagent token inspect`.
type TokenInfo struct {
	Anchor string     `json:"anchor"`
	Holder string     `json:"holder"`
	Size   int        `json:"size_bytes"`
	Links  []LinkInfo `json:"links"`
}

// LinkInfo is the JSON view of a link.
type LinkInfo struct {
	ID          string    `json:"id"` // the derived LinkID: what `meshagent ca revoke --token` takes
	Holder      string    `json:"holder"`
	Scopes      []string  `json:"scopes"`
	Delegatable []string  `json:"delegatable"`
	NotBefore   time.Time `json:"not_before"`
	Expires     time.Time `json:"expires"`
}

// Info returns the JSON view. It decodes only: nothing is verified.
func (t *Token) Info() TokenInfo {
	ti := TokenInfo{Anchor: t.Anchor.String(), Holder: t.Holder().String(), Size: len(t.Bytes())}
	for _, l := range t.Links {
		d := l.Delegatable
		if d == nil {
			d = []string{}
		}
		ti.Links = append(ti.Links, LinkInfo{l.ID.String(), l.Holder.String(), l.Scopes, d, l.NotBefore.UTC(), l.Expires.UTC()})
	}
	return ti
}

func encodeLinkBody(l *Link, mask uint64) []byte {
	body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.LinkBody{
		Holder: l.Holder[:], Scopes: l.Scopes, Delegatable: mask,
		NotBefore: l.NotBefore.Unix(), Expires: l.Expires.Unix(), Id: l.nonce[:],
	})
	return body
}
