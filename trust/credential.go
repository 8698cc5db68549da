package trust

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
	"google.golang.org/protobuf/proto"
)

// Credential defaults and limits.
const (
	DefaultCredentialTTL = 24 * time.Hour // an agent certificate lasts a day
	MaxCredentialSize    = 1024           // encoded bytes
	MaxNameLen           = 64
	credentialVersion    = 1
	PEMCredential        = "MESHAGENT CREDENTIAL"
)

// Credential is an agent's certificate: an anchor's signature binding the
// agent's identity key (Subject) and name to the mesh for a time window.
type Credential struct {
	Issuer    PublicKey
	Subject   PublicKey
	Name      string
	NotBefore time.Time
	Expires   time.Time
	Serial    [16]byte

	body, sig []byte // exactly as signed / received
}

// ValidateName checks an agent name: 1 to 64 characters of [A-Za-z0-9._-].
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen {
		return fail(CodeMalformed, -1, "agent name must be 1-%d characters", MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fail(CodeMalformed, -1, "agent name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// IssueCredential signs a credential for subject, valid from notBefore for
// ttl (truncated to whole seconds).
func IssueCredential(a *AnchorKey, subject PublicKey, name string, notBefore time.Time, ttl time.Duration) (*Credential, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if subject.IsZero() {
		return nil, fail(CodeMalformed, -1, "no subject")
	}
	if err := subject.checkWeak(); err != nil {
		return nil, err
	}
	if ttl < time.Second {
		return nil, fail(CodeMalformed, -1, "credential lifetime %s is too short", ttl)
	}
	c := &Credential{Issuer: a.Public(), Subject: subject, Name: name,
		NotBefore: notBefore.Truncate(time.Second), Expires: notBefore.Add(ttl).Truncate(time.Second)}
	if _, err := rand.Read(c.Serial[:]); err != nil {
		return nil, err
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.CredentialBody{
		Version: credentialVersion, Issuer: c.Issuer[:], Subject: c.Subject[:], Name: name,
		NotBefore: c.NotBefore.Unix(), Expires: c.Expires.Unix(), Serial: c.Serial[:],
	})
	if err != nil {
		return nil, err
	}
	c.body = body
	c.sig = a.kp.sign(wire.DomainCredential, body)
	return c, nil
}

// ParseCredential decodes an encoded credential (no signature check: see
// Verifier.VerifyCredential).
func ParseCredential(b []byte) (*Credential, error) {
	if len(b) > MaxCredentialSize {
		return nil, fail(CodeTooLarge, -1, "credential is %d bytes, at most %d", len(b), MaxCredentialSize)
	}
	var s trustpb.Signed
	if err := proto.Unmarshal(b, &s); err != nil {
		return nil, fail(CodeMalformed, -1, "credential: %v", err)
	}
	return credentialFromSigned(&s)
}

// CredentialFromProto converts a decoded wire credential.
func CredentialFromProto(s *trustpb.Signed) (*Credential, error) {
	if s == nil {
		return nil, fail(CodeMalformed, -1, "no credential")
	}
	if n := proto.Size(s); n > MaxCredentialSize {
		return nil, fail(CodeTooLarge, -1, "credential is %d bytes, at most %d", n, MaxCredentialSize)
	}
	return credentialFromSigned(s)
}

func credentialFromSigned(s *trustpb.Signed) (*Credential, error) {
	var b trustpb.CredentialBody
	if err := proto.Unmarshal(s.Body, &b); err != nil {
		return nil, fail(CodeMalformed, -1, "credential body: %v", err)
	}
	if b.Version == 0 {
		return nil, fail(CodeMalformed, -1, "credential has no version")
	}
	if b.Version != credentialVersion {
		return nil, fail(CodeVersion, -1, "credential version %d not supported", b.Version)
	}
	iss, err := PublicKeyFromBytes(b.Issuer)
	if err != nil {
		return nil, err
	}
	sub, err := PublicKeyFromBytes(b.Subject)
	if err != nil {
		return nil, err
	}
	if err := ValidateName(b.Name); err != nil {
		return nil, err
	}
	if len(b.Serial) != 16 {
		return nil, fail(CodeMalformed, -1, "credential serial is %d bytes, want 16", len(b.Serial))
	}
	c := &Credential{Issuer: iss, Subject: sub, Name: b.Name,
		NotBefore: time.Unix(b.NotBefore, 0), Expires: time.Unix(b.Expires, 0),
		body: s.Body, sig: s.Signature}
	copy(c.Serial[:], b.Serial)
	return c, nil
}

// Equal reports whether c and o are the same signed credential, byte for
// byte.
func (c *Credential) Equal(o *Credential) bool {
	return o != nil && string(c.body) == string(o.body) && string(c.sig) == string(o.sig)
}

// Proto returns the wire form.
func (c *Credential) Proto() *trustpb.Signed { return &trustpb.Signed{Body: c.body, Signature: c.sig} }

// Bytes returns the encoded credential.
func (c *Credential) Bytes() []byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c.Proto())
	return b
}

// SerialString returns the serial in hex.
func (c *Credential) SerialString() string { return hex.EncodeToString(c.Serial[:]) }

// ParseSerial parses the hex form of a credential serial (SerialString, the
// "serial" of CredentialInfo).
func ParseSerial(s string) ([16]byte, error) {
	var serial [16]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(serial) {
		return serial, fail(CodeMalformed, -1, "credential serial %q is not 32 hex digits", s)
	}
	copy(serial[:], b)
	return serial, nil
}

// CredentialInfo is the JSON view of a credential.
type CredentialInfo struct {
	Issuer    string    `json:"issuer"`
	Subject   string    `json:"subject"`
	Name      string    `json:"name"`
	NotBefore time.Time `json:"not_before"`
	Expires   time.Time `json:"expires"`
	Serial    string    `json:"serial"`
}

// Info returns the JSON view.
func (c *Credential) Info() CredentialInfo {
	return CredentialInfo{c.Issuer.String(), c.Subject.String(), c.Name, c.NotBefore.UTC(), c.Expires.UTC(), c.SerialString()}
}
