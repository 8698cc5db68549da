package protocol

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Protocol constants.
const (
	// Version is the envelope format version (see the package doc).
	Version = 1
	// ProtocolRPC is the libp2p protocol ID of request/reply calls: the
	// same constant as wire.ProtocolRPC, kept here for its callers.
	ProtocolRPC = wire.ProtocolRPC
	// ProtocolAdmission is the libp2p protocol ID of the credential
	// exchange: the same constant as wire.ProtocolAdmission, kept here
	// for its callers.
	ProtocolAdmission = wire.ProtocolAdmission
	// DomainEnvelope prefixes every envelope signature: the same constant
	// as wire.DomainEnvelope, kept here for its callers.
	DomainEnvelope = wire.DomainEnvelope
	// DefaultMaxEnvelopeSize bounds an encoded envelope, body included.
	DefaultMaxEnvelopeSize = 256 << 10
	// NonceSize is the size of the nonces this package makes; decoders
	// accept 16 to 32 bytes.
	NonceSize    = 16
	maxNonceSize = 32
	// DefaultWindow is the replay window: envelopes whose timestamp is more
	// than this away from the receiver's clock are stale.
	DefaultWindow = 5 * time.Minute
)

// Kind says what an envelope is.
type Kind int32

// Kinds. The values are the wire enum's.
const (
	KindRequest = Kind(protocolpb.Kind_KIND_REQUEST) // an RPC request, needs a token
	KindReply   = Kind(protocolpb.Kind_KIND_REPLY)   // a successful reply
	KindError   = Kind(protocolpb.Kind_KIND_ERROR)   // a rejected or failed call
	KindMessage = Kind(protocolpb.Kind_KIND_MESSAGE) // a pubsub message, needs a token
	// KindProgress is a callee's progress message on a call, before its
	// reply: same correlation ID, addressed to the caller, no token.
	KindProgress = Kind(protocolpb.Kind_KIND_PROGRESS)
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindReply:
		return "reply"
	case KindError:
		return "error"
	case KindMessage:
		return "message"
	case KindProgress:
		return "progress"
	}
	return "unknown"
}

// needsToken reports whether the kind must carry a capability chain.
func (k Kind) needsToken() bool { return k == KindRequest || k == KindMessage }

// CorrelationID ties a request, its reply and onward calls together.
type CorrelationID [16]byte

// NewCorrelationID returns a random ID.
func NewCorrelationID() CorrelationID {
	var c CorrelationID
	_, _ = rand.Read(c[:])
	return c
}

// String returns the ID in hex.
func (c CorrelationID) String() string { return hex.EncodeToString(c[:]) }

// ParseCorrelationID parses the hex form.
func ParseCorrelationID(s string) (CorrelationID, error) {
	var c CorrelationID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(c) {
		return c, Reject(trust.CodeMalformed, "correlation ID %q is not 32 hex digits", s)
	}
	copy(c[:], b)
	return c, nil
}

// Envelope is a signed message between agents. Build one, then Seal it;
// receivers get one from Decider.Decide (or Open, which checks nothing).
type Envelope struct {
	Kind           Kind
	Sender         trust.PublicKey
	RecipientPeer  trust.PublicKey // set for RPC
	RecipientTopic string          // set for pubsub
	Action         string
	Payload        []byte
	ContentType    string
	Timestamp      time.Time
	Nonce          []byte
	CorrelationID  CorrelationID
	Token          *trust.Token
	ErrorCode      trust.Code // KindError only
	ErrorDetail    string     // KindError only
	// RetryAfter is when a busy receiver asks the caller to try again
	// (KindError with ErrorCode busy only; whole milliseconds on the wire).
	RetryAfter time.Duration
	// Traceparent and Tracestate are the W3C trace context of the call:
	// the sender's signed claim, for correlating traces, never for
	// deciding anything. Open refuses a malformed or oversized one.
	Traceparent string
	Tracestate  string

	body, sig []byte // exactly as signed / received
}

// maxRetryAfterMs caps a retry-after read from the wire (an hour): more
// would overflow a time.Duration, and no caller waits that long anyway.
const maxRetryAfterMs = int64(time.Hour / time.Millisecond)

// Seal fills in the sender, timestamp (now), a fresh nonce and, when zero,
// a correlation ID, then signs e with id and returns the wire bytes.
func Seal(id *trust.Identity, e *Envelope, now time.Time) ([]byte, error) {
	e.Sender = id.Public()
	e.Timestamp = now
	e.Nonce = make([]byte, NonceSize)
	if _, err := rand.Read(e.Nonce); err != nil {
		return nil, err
	}
	if e.CorrelationID == (CorrelationID{}) {
		e.CorrelationID = NewCorrelationID()
	}
	b := &protocolpb.EnvelopeBody{
		Version: Version, Kind: protocolpb.Kind(e.Kind), Sender: e.Sender[:], Action: e.Action,
		Payload: e.Payload, ContentType: e.ContentType, Timestamp: now.UnixNano(), Nonce: e.Nonce,
		CorrelationId: e.CorrelationID[:], ErrorCode: string(e.ErrorCode), ErrorDetail: e.ErrorDetail,
		RecipientTopic: e.RecipientTopic, RetryAfterMs: e.RetryAfter.Milliseconds(),
		Traceparent: e.Traceparent, Tracestate: e.Tracestate,
	}
	if !e.RecipientPeer.IsZero() {
		b.RecipientPeer = e.RecipientPeer[:]
	}
	if e.Token != nil {
		b.Token = e.Token.Proto()
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if err != nil {
		return nil, err
	}
	e.body = body
	e.sig = id.Sign(wire.DomainEnvelope, body)
	return proto.MarshalOptions{Deterministic: true}.Marshal(&protocolpb.Envelope{Body: body, Signature: e.sig})
}

// Open decodes wire bytes of at most maxSize into an Envelope. It checks
// the structure only: no signature, time, chain or replay check. Use
// Decider.Decide before acting on anything.
func Open(raw []byte, maxSize, maxTokenSize int) (*Envelope, error) {
	return open(raw, maxSize, func(b []byte) (*trust.Token, error) { return trust.ParseToken(b, maxTokenSize) })
}

// open is Open with the token decoder given: Decide passes the verifier's,
// which keeps the chains it authorized.
func open(raw []byte, maxSize int, decodeToken func([]byte) (*trust.Token, error)) (*Envelope, error) {
	if len(raw) > maxSize {
		return nil, Reject(trust.CodeTooLarge, "envelope is %d bytes, at most %d", len(raw), maxSize)
	}
	body, sig, ok := splitEnvelope(raw)
	if !ok {
		return nil, Reject(trust.CodeMalformed, "envelope: not a protobuf Envelope")
	}
	var b protocolpb.EnvelopeBodyOpen
	if !readBody(body, &b) {
		return nil, Reject(trust.CodeMalformed, "envelope body: not a protobuf EnvelopeBody")
	}
	if b.Version == 0 {
		return nil, Reject(trust.CodeMalformed, "envelope has no version")
	}
	if b.Version != Version {
		return nil, Reject(CodeVersion, "envelope version %d, this node speaks %d", b.Version, Version)
	}
	e := &Envelope{Kind: Kind(b.Kind), Action: b.Action, Payload: b.Payload, ContentType: b.ContentType,
		Timestamp: time.Unix(0, b.Timestamp), Nonce: b.Nonce, RecipientTopic: b.RecipientTopic,
		ErrorCode: trust.Code(b.ErrorCode), ErrorDetail: b.ErrorDetail, body: body, sig: sig,
		RetryAfter:  time.Duration(min(max(b.RetryAfterMs, 0), maxRetryAfterMs)) * time.Millisecond,
		Traceparent: b.Traceparent, Tracestate: b.Tracestate}
	if err := CheckTraceContext(e.Traceparent, e.Tracestate); err != nil {
		return nil, err
	}
	switch e.Kind {
	case KindRequest, KindReply, KindError, KindMessage, KindProgress:
	default:
		return nil, Reject(trust.CodeMalformed, "unknown envelope kind %d", b.Kind)
	}
	var err error
	if e.Sender, err = trust.PublicKeyFromBytes(b.Sender); err != nil {
		return nil, Reject(trust.CodeMalformed, "sender: %v", err)
	}
	if (len(b.RecipientPeer) == 0) == (b.RecipientTopic == "") {
		return nil, Reject(trust.CodeMalformed, "envelope must name exactly one recipient, a peer or a topic")
	}
	if len(b.RecipientPeer) > 0 {
		if e.RecipientPeer, err = trust.PublicKeyFromBytes(b.RecipientPeer); err != nil {
			return nil, Reject(trust.CodeMalformed, "recipient: %v", err)
		}
	}
	if len(b.Nonce) < NonceSize || len(b.Nonce) > maxNonceSize {
		return nil, Reject(trust.CodeMalformed, "nonce is %d bytes, want %d to %d", len(b.Nonce), NonceSize, maxNonceSize)
	}
	if len(b.CorrelationId) != len(CorrelationID{}) {
		return nil, Reject(trust.CodeMalformed, "correlation ID is %d bytes, want 16", len(b.CorrelationId))
	}
	copy(e.CorrelationID[:], b.CorrelationId)
	if len(b.Token) > 0 {
		tok := b.Token[0]
		if len(b.Token) > 1 { // a message field given several times is their merge
			tok = bytes.Join(b.Token, nil)
		}
		if e.Token, err = decodeToken(tok); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// splitEnvelope reads the two fields of an encoded protocolpb.Envelope as
// proto.Unmarshal does (the last occurrence of a field wins; unknown
// fields, and these of another wire type, are skipped), without copying:
// body and sig alias raw. It saves a third of the decode of a warm
// envelope (FuzzOpenMatchesFullDecode holds it to proto.Unmarshal).
func splitEnvelope(raw []byte) (body, sig []byte, ok bool) {
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber || typ == protowire.EndGroupType {
			return nil, nil, false
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, nil, false
			}
			if num == 1 {
				body = v
			} else {
				sig = v
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, nil, false
		}
		b = b[m:]
	}
	return body, sig, true
}

// Size returns the encoded size of a sealed or opened envelope.
func (e *Envelope) Size() int { return len(e.body) + len(e.sig) + 6 }

// VerifySignature checks the sender's signature over the exact body bytes.
func (e *Envelope) VerifySignature() bool {
	return e.Sender.Verify(wire.DomainEnvelope, e.body, e.sig)
}

// Bounds of the trace context an envelope carries: a version-00
// traceparent is exactly 55 bytes; W3C asks tracestate to be at most 512.
const (
	MaxTraceparent = 55
	MaxTracestate  = 512
)

// CheckTraceContext refuses (malformed) a traceparent that is not the W3C
// form 2hex-32hex-16hex-2hex (lowercase, version not ff, trace and parent
// IDs not all zero), a tracestate over MaxTracestate bytes or with
// characters outside printable ASCII, or a tracestate without a
// traceparent. Both empty is fine.
func CheckTraceContext(traceparent, tracestate string) error {
	if traceparent == "" {
		if tracestate != "" {
			return Reject(trust.CodeMalformed, "tracestate without traceparent")
		}
		return nil
	}
	if len(traceparent) != MaxTraceparent {
		return Reject(trust.CodeMalformed, "traceparent is %d bytes, want %d", len(traceparent), MaxTraceparent)
	}
	for i := 0; i < len(traceparent); i++ {
		c := traceparent[i]
		switch i {
		case 2, 35, 52:
			if c != '-' {
				return Reject(trust.CodeMalformed, "traceparent %.64q is not version-traceid-parentid-flags", traceparent)
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return Reject(trust.CodeMalformed, "traceparent %.64q: not lowercase hex", traceparent)
			}
		}
	}
	if traceparent[:2] == "ff" || traceparent[3:35] == strings.Repeat("0", 32) || traceparent[36:52] == strings.Repeat("0", 16) {
		return Reject(trust.CodeMalformed, "traceparent %.64q: invalid version or all-zero ID", traceparent)
	}
	if len(tracestate) > MaxTracestate {
		return Reject(trust.CodeMalformed, "tracestate is %d bytes, at most %d", len(tracestate), MaxTracestate)
	}
	for i := 0; i < len(tracestate); i++ {
		if c := tracestate[i]; c < 0x20 || c > 0x7e {
			return Reject(trust.CodeMalformed, "tracestate has a byte 0x%02x outside printable ASCII", c)
		}
	}
	return nil
}
