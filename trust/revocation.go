package trust

import (
	"crypto/rand"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
	"google.golang.org/protobuf/proto"
)

// Revocation limits.
const (
	MaxRevocationSize = 512
	revocationVersion = 2 // 1 named links and credential serials alike: refused
	PEMRevocation     = "MESHAGENT REVOCATION"
)

// Revocation is an anchor-signed record that revokes exactly one of: one
// token link by its LinkID (and so every chain built on it), one credential
// by its serial, or everything held or issued by one agent with a
// not-before earlier than Before (key compromise). Link IDs and serials are
// separate namespaces: a link revocation never matches a credential and a
// credential revocation never matches a link, whatever their bytes. It is
// kept until KeepUntil, after which everything it could revoke has expired
// anyway.
type Revocation struct {
	Issuer    PublicKey
	LinkID    LinkID    // zero unless revoking one token link
	Serial    [16]byte  // zero unless revoking one credential
	Agent     PublicKey // zero unless revoking an agent
	Before    time.Time
	IssuedAt  time.Time
	KeepUntil time.Time
	ID        [16]byte

	body, sig []byte
}

// RevokeLink signs a revocation of one token link, named by its derived
// Link.ID (the "id" that `meshagent token inspect` shows), and so of every
// chain built on that link. keep must be at least the longest lifetime that
// the mesh accepts (Policy.MaxTokenLifetime); DefaultMaxTokenLife is a safe
// choice.
func RevokeLink(a *AnchorKey, id LinkID, now time.Time, keep time.Duration) (*Revocation, error) {
	if id == (LinkID{}) {
		return nil, fail(CodeMalformed, -1, "no link ID")
	}
	return signRevocation(a, &Revocation{LinkID: id, IssuedAt: now, KeepUntil: now.Add(keep)})
}

// RevokeCredential signs a revocation of the credential with this serial
// (Credential.Serial). keep must be at least the longest credential
// lifetime that the mesh accepts (Policy.MaxCredentialLifetime).
func RevokeCredential(a *AnchorKey, serial [16]byte, now time.Time, keep time.Duration) (*Revocation, error) {
	if serial == ([16]byte{}) {
		return nil, fail(CodeMalformed, -1, "no credential serial")
	}
	return signRevocation(a, &Revocation{Serial: serial, IssuedAt: now, KeepUntil: now.Add(keep)})
}

// RevokeAgent signs a revocation of every credential and link held or
// issued by agent with a not-before earlier than before.
func RevokeAgent(a *AnchorKey, agent PublicKey, before, now time.Time, keep time.Duration) (*Revocation, error) {
	if agent.IsZero() {
		return nil, fail(CodeMalformed, -1, "no agent")
	}
	if err := agent.checkWeak(); err != nil {
		return nil, err
	}
	return signRevocation(a, &Revocation{Agent: agent, Before: before, IssuedAt: now, KeepUntil: before.Add(keep)})
}

func signRevocation(a *AnchorKey, r *Revocation) (*Revocation, error) {
	r.Issuer = a.Public()
	if _, err := rand.Read(r.ID[:]); err != nil {
		return nil, err
	}
	b := &trustpb.RevocationBody{Version: revocationVersion, Issuer: r.Issuer[:], IssuedAt: r.IssuedAt.Unix(),
		KeepUntil: r.KeepUntil.Unix(), Id: r.ID[:]}
	switch {
	case r.LinkID != (LinkID{}):
		b.LinkId = r.LinkID[:]
	case r.Serial != ([16]byte{}):
		b.CredentialSerial = r.Serial[:]
	default:
		b.Agent = r.Agent[:]
		b.Before = r.Before.Unix()
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if err != nil {
		return nil, err
	}
	r.body = body
	r.sig = a.kp.sign(wire.DomainRevocation, body)
	return r, nil
}

// ParseRevocation decodes an encoded revocation (no signature check).
func ParseRevocation(data []byte) (*Revocation, error) {
	if len(data) > MaxRevocationSize {
		return nil, fail(CodeTooLarge, -1, "revocation is %d bytes, at most %d", len(data), MaxRevocationSize)
	}
	var s trustpb.Signed
	if err := proto.Unmarshal(data, &s); err != nil {
		return nil, fail(CodeMalformed, -1, "revocation: %v", err)
	}
	var b trustpb.RevocationBody
	if err := proto.Unmarshal(s.Body, &b); err != nil {
		return nil, fail(CodeMalformed, -1, "revocation body: %v", err)
	}
	switch b.Version {
	case revocationVersion:
	case 0:
		return nil, fail(CodeMalformed, -1, "revocation has no version")
	case 1:
		return nil, fail(CodeVersion, -1, "revocation version 1 is refused: it named a token link and a credential serial alike; sign a version %d one (meshagent ca revoke --token, --credential or --agent)", revocationVersion)
	default:
		return nil, fail(CodeVersion, -1, "revocation version %d not supported, want %d", b.Version, revocationVersion)
	}
	iss, err := PublicKeyFromBytes(b.Issuer)
	if err != nil {
		return nil, err
	}
	r := &Revocation{Issuer: iss, IssuedAt: time.Unix(b.IssuedAt, 0), KeepUntil: time.Unix(b.KeepUntil, 0), body: s.Body, sig: s.Signature}
	copy(r.ID[:], b.Id)
	switch {
	case len(b.LinkId) > 0 && len(b.CredentialSerial) == 0 && len(b.Agent) == 0:
		if len(b.LinkId) != len(r.LinkID) || LinkID(b.LinkId) == (LinkID{}) {
			return nil, fail(CodeMalformed, -1, "revocation names a link ID of %d bytes, or the zero one", len(b.LinkId))
		}
		r.LinkID = LinkID(b.LinkId)
	case len(b.LinkId) == 0 && len(b.CredentialSerial) > 0 && len(b.Agent) == 0:
		if len(b.CredentialSerial) != len(r.Serial) || [16]byte(b.CredentialSerial) == ([16]byte{}) {
			return nil, fail(CodeMalformed, -1, "revocation names a credential serial of %d bytes, or the zero one", len(b.CredentialSerial))
		}
		r.Serial = [16]byte(b.CredentialSerial)
	case len(b.LinkId) == 0 && len(b.CredentialSerial) == 0 && len(b.Agent) > 0:
		if r.Agent, err = PublicKeyFromBytes(b.Agent); err != nil {
			return nil, err
		}
		r.Before = time.Unix(b.Before, 0)
	default:
		return nil, fail(CodeMalformed, -1, "revocation must name exactly one of a link ID, a credential serial or an agent")
	}
	return r, nil
}

// Bytes returns the encoded revocation.
func (r *Revocation) Bytes() []byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.Signed{Body: r.body, Signature: r.sig})
	return b
}

// AddRevocation verifies r (signed by a configured anchor) and applies it.
// A revocation kept past its time (KeepUntil) is accepted and dropped: what
// it revokes has expired. When the set is full even after forgetting
// expired records, r is refused with CodeFull.
func (v *Verifier) AddRevocation(r *Revocation, now time.Time) error {
	if !v.IsAnchor(r.Issuer) {
		return fail(CodeUntrustedRoot, -1, "revocation issuer %s is not a trusted anchor", r.Issuer)
	}
	if !r.Issuer.Verify(wire.DomainRevocation, r.body, r.sig) {
		return fail(CodeBadSignature, -1, "revocation signature does not verify")
	}
	return v.revs.add(r, v.KeepUntil(r), now)
}

// KeepUntil returns how long this verifier keeps r: its KeepUntil, but no
// earlier than what it revokes can have expired under this policy (from
// its issue time, or Before for an agent, plus the longest lifetime the
// policy accepts). A revocation signed with too short a keep would
// otherwise be forgotten while what it revokes is still valid, and the
// refusal would lapse into acceptance. (A link or credential dated to
// start after the revocation was issued is not covered by this floor.)
func (v *Verifier) KeepUntil(r *Revocation) time.Time {
	life := v.p.MaxTokenLifetime
	from := r.IssuedAt
	switch {
	case r.Serial != ([16]byte{}):
		life = v.p.MaxCredentialLifetime
	case r.LinkID == (LinkID{}): // an agent: its credentials and links
		life, from = max(v.p.MaxTokenLifetime, v.p.MaxCredentialLifetime), r.Before
	}
	if floor := from.Add(life + v.p.ClockSkew); floor.After(r.KeepUntil) {
		return floor
	}
	return r.KeepUntil
}

// Revocations returns how many revocation records are held.
func (v *Verifier) Revocations() int { return v.revs.len() }

// PruneRevocations forgets records whose KeepUntil has passed.
func (v *Verifier) PruneRevocations(now time.Time) { v.revs.prune(now) }

type agentRevocation struct {
	before, keep time.Time
}

// revokedID names one revoked thing by ID: a link or a credential. The
// kind keeps the two namespaces apart, so that equal bytes in both never
// match each other.
type revokedID struct {
	credential bool // false: id is a LinkID; true: a credential serial
	id         [16]byte
}

// idOf returns the revokedID that r names, and false for an agent
// revocation.
func idOf(r *Revocation) (revokedID, bool) {
	switch {
	case r.LinkID != (LinkID{}):
		return revokedID{id: r.LinkID}, true
	case r.Serial != ([16]byte{}):
		return revokedID{credential: true, id: r.Serial}, true
	}
	return revokedID{}, false
}

// revocationSet holds what is revoked, bounded to max entries.
type revocationSet struct {
	mu     sync.RWMutex
	max    int
	ids    map[revokedID]time.Time // link or credential -> keep until
	agents map[PublicKey]agentRevocation
	// gen counts the changes that can revoke something, under mu: cached
	// verdicts re-check revocations when it moved (Verifier.Generation).
	gen atomic.Uint64
}

func newRevocationSet(max int) *revocationSet {
	return &revocationSet{max: max, ids: map[revokedID]time.Time{}, agents: map[PublicKey]agentRevocation{}}
}

func (s *revocationSet) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.ids) + len(s.agents)
}

func (s *revocationSet) add(r *Revocation, keep, now time.Time) error {
	if !now.Before(keep) {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id, byID := idOf(r)
	if byID {
		if k, ok := s.ids[id]; ok {
			if keep.After(k) {
				s.ids[id] = keep
			}
			return nil
		}
	} else if a, ok := s.agents[r.Agent]; ok {
		if r.Before.After(a.before) {
			a.before = r.Before
			s.gen.Add(1)
		}
		if keep.After(a.keep) {
			a.keep = keep
		}
		s.agents[r.Agent] = a
		return nil
	}
	if len(s.ids)+len(s.agents) >= s.max {
		s.pruneLocked(now)
		if len(s.ids)+len(s.agents) >= s.max {
			return fail(CodeFull, -1, "revocation set holds %d records, its limit", s.max)
		}
	}
	if byID {
		s.ids[id] = keep
	} else {
		s.agents[r.Agent] = agentRevocation{before: r.Before, keep: keep}
	}
	s.gen.Add(1)
	return nil
}

func (s *revocationSet) prune(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
}

func (s *revocationSet) pruneLocked(now time.Time) {
	for id, k := range s.ids {
		if !now.Before(k) {
			delete(s.ids, id)
		}
	}
	for a, r := range s.agents {
		if !now.Before(r.keep) {
			delete(s.agents, a)
		}
	}
}

// agentRevokedLocked reports whether something of agent's with the given
// not-before is revoked.
func (s *revocationSet) agentRevokedLocked(agent PublicKey, notBefore time.Time) bool {
	r, ok := s.agents[agent]
	return ok && notBefore.Before(r.before)
}

// chainRevoked checks t against the set and returns the generation it
// checked against.
func (s *revocationSet) chainRevoked(t *Token) (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	gen := s.gen.Load()
	if len(s.ids) == 0 && len(s.agents) == 0 {
		return gen, nil
	}
	for i, l := range t.Links {
		if _, ok := s.ids[revokedID{id: l.ID}]; ok {
			return gen, fail(CodeRevoked, i, "link %s is revoked", l.ID)
		}
		if s.agentRevokedLocked(l.Holder, l.NotBefore) {
			return gen, fail(CodeRevoked, i, "holder %s is revoked", l.Holder)
		}
		if i > 0 && s.agentRevokedLocked(t.Links[i-1].Holder, l.NotBefore) {
			return gen, fail(CodeRevoked, i, "issuer %s is revoked", t.Links[i-1].Holder)
		}
	}
	return gen, nil
}

func (s *revocationSet) credentialRevoked(c *Credential, now time.Time) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.ids[revokedID{credential: true, id: c.Serial}]; ok {
		return fail(CodeRevoked, -1, "credential %s is revoked", c.SerialString())
	}
	if s.agentRevokedLocked(c.Subject, c.NotBefore) {
		return fail(CodeRevoked, -1, "agent %s is revoked", c.Subject)
	}
	return nil
}
