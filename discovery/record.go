package discovery

import (
	"bytes"
	"encoding/binary"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
)

// DomainAnnounce prefixes the signature of a registry record: the same constant as
// wire.DomainAnnounce, kept here for its callers.
const DomainAnnounce = wire.DomainAnnounce

// Record limits.
const (
	MaxRecordSize = 4096
	MaxAddrs      = 16
)

// Record is a verified registry record: what an agent says of itself,
// signed with its own key. A node keeps one per agent, so it is compact:
// the signed bytes in one buffer, which the credential and the addresses
// alias, and only the fields the registry reads parsed out.
type Record struct {
	Agent      trust.PublicKey
	Credential *trust.Credential
	Seq        uint64
	Interval   time.Duration
	Timestamp  time.Time

	buf   []byte   // body then signature, exactly as signed (less names, when set)
	addrs [][]byte // each a slice of buf
	n     uint32   // length of the body in buf
	// digestAt is one more than where the advertisement digest starts
	// in buf (0: no actions). Actions reads the names from the body, so
	// they cost a record nothing but their wire bytes.
	digestAt uint32
	// names, when not empty, is the body's run of action names (its
	// field 8 entries, canonically encoded), kept apart from buf at
	// namesAt of the body: a registry shares one copy among the records
	// of the agents that advertise the same actions (shareNames).
	names   string
	namesAt uint32
}

// NewRecord signs a record for id.
func NewRecord(id *trust.Identity, cred *trust.Credential, addrs []ma.Multiaddr, seq uint64, interval time.Duration, now time.Time) (*Record, error) {
	return NewRecordAdvertising(id, cred, addrs, seq, interval, now, nil, [32]byte{})
}

// NewRecordAdvertising signs a record for id that names the actions it
// serves (sorted, as SignAdvert returns them) and the digest of its
// advertisement; with no actions, the digest is left out.
func NewRecordAdvertising(id *trust.Identity, cred *trust.Credential, addrs []ma.Multiaddr, seq uint64, interval time.Duration, now time.Time,
	actions []string, digest [32]byte) (*Record, error) {
	if len(addrs) > MaxAddrs {
		addrs = addrs[:MaxAddrs]
	}
	b := &protocolpb.AnnouncementBody{Version: protocol.Version, Agent: publicBytes(id.Public()), Credential: cred.Proto(),
		Seq: seq, HeartbeatIntervalMs: interval.Milliseconds(), Timestamp: now.UnixNano()}
	if len(actions) > 0 {
		b.Actions, b.AdvertDigest = actions, digest[:]
	}
	for _, a := range addrs {
		b.Addrs = append(b.Addrs, a.Bytes())
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	if err != nil {
		return nil, err
	}
	a := &protocolpb.Announcement{Body: body, Signature: id.Sign(wire.DomainAnnounce, body)}
	return ParseRecord(a)
}

func publicBytes(k trust.PublicKey) []byte { return append([]byte(nil), k[:]...) }

// ParseRecord checks the structure and self-signature of a wire record and
// that its credential names the same agent. It does not check the
// credential against the anchors: Registry.Announce does. The record keeps
// none of a's memory.
func ParseRecord(a *protocolpb.Announcement) (*Record, error) {
	if a == nil {
		return nil, protocol.Reject(trust.CodeMalformed, "no record")
	}
	if n := proto.Size(a); n > MaxRecordSize {
		return nil, protocol.Reject(trust.CodeTooLarge, "record is %d bytes, at most %d", n, MaxRecordSize)
	}
	var b protocolpb.AnnouncementBody
	if err := proto.Unmarshal(a.Body, &b); err != nil {
		return nil, protocol.Reject(trust.CodeMalformed, "record: %v", err)
	}
	if b.Version != protocol.Version {
		return nil, protocol.Reject(protocol.CodeVersion, "record version %d", b.Version)
	}
	agent, err := trust.PublicKeyFromBytes(b.Agent)
	if err != nil {
		return nil, err
	}
	if !agent.Verify(wire.DomainAnnounce, a.Body, a.Signature) {
		return nil, protocol.Reject(trust.CodeBadSignature, "record of %s: signature does not verify", agent)
	}
	if b.HeartbeatIntervalMs <= 0 {
		return nil, protocol.Reject(trust.CodeMalformed, "record of %s: heartbeat interval %d ms", agent, b.HeartbeatIntervalMs)
	}
	if len(b.Addrs) > MaxAddrs {
		return nil, protocol.Reject(trust.CodeMalformed, "record of %s: %d addresses, at most %d", agent, len(b.Addrs), MaxAddrs)
	}
	if err := checkActions(agent, b.Actions, b.AdvertDigest); err != nil {
		return nil, err
	}
	// One buffer for everything kept: the byte fields the decoder copied
	// out of the body are found again inside it (protobuf writes a bytes
	// field verbatim) and aliased.
	buf := make([]byte, len(a.Body)+len(a.Signature))
	copy(buf[copy(buf, a.Body):], a.Signature)
	body := buf[:len(a.Body):len(a.Body)]
	if b.Credential != nil {
		b.Credential.Body, b.Credential.Signature = within(body, b.Credential.Body), within(body, b.Credential.Signature)
	}
	cred, err := trust.CredentialFromProto(b.Credential)
	if err != nil {
		return nil, err
	}
	if !cred.Subject.Equal(agent) {
		return nil, protocol.Reject(protocol.CodeImpersonation, "record of %s carries a credential for %s", agent, cred.Subject)
	}
	r := &Record{Agent: agent, Credential: cred, Seq: b.Seq, Interval: time.Duration(b.HeartbeatIntervalMs) * time.Millisecond,
		Timestamp: time.Unix(0, b.Timestamp), buf: buf, n: uint32(len(a.Body))}
	if len(b.Addrs) > 0 {
		r.addrs = make([][]byte, len(b.Addrs))
	}
	for i, ab := range b.Addrs {
		if _, err := ma.NewMultiaddrBytes(ab); err != nil {
			return nil, protocol.Reject(trust.CodeMalformed, "record of %s: address: %v", agent, err)
		}
		r.addrs[i] = within(body, ab)
	}
	if len(b.Actions) > 0 {
		// The digest's bytes are in the body (protobuf writes a bytes
		// field verbatim); any occurrence holds the same value.
		r.digestAt = uint32(bytes.Index(body, b.AdvertDigest)) + 1
	}
	return r, nil
}

// checkActions checks a record's advertised names: at most MaxActions
// scopes, sorted and each once, with a 32-byte digest when there are any.
func checkActions(agent trust.PublicKey, names []string, digest []byte) error {
	if len(names) == 0 {
		if len(digest) != 0 {
			return protocol.Reject(trust.CodeMalformed, "record of %s: an advertisement digest without actions", agent)
		}
		return nil
	}
	if len(names) > MaxActions {
		return protocol.Reject(trust.CodeMalformed, "record of %s: %d actions, at most %d", agent, len(names), MaxActions)
	}
	if len(digest) != 32 {
		return protocol.Reject(trust.CodeMalformed, "record of %s: advertisement digest of %d bytes", agent, len(digest))
	}
	for i, name := range names {
		if err := trust.ValidateScope(name); err != nil {
			return protocol.Reject(trust.CodeMalformed, "record of %s: action: %v", agent, err)
		}
		if i > 0 && names[i-1] >= name {
			return protocol.Reject(trust.CodeMalformed, "record of %s: actions not sorted or named twice", agent)
		}
	}
	return nil
}

// Actions returns the scopes the agent advertises, sorted (read from the
// signed body, checked when the record was parsed).
func (r *Record) Actions() []string {
	out := []string{}
	if r.digestAt == 0 {
		return out
	}
	if r.names != "" {
		// A run of canonical entries (shareNames checked it): the tag,
		// a one-byte length, the name.
		for s := r.names; len(s) >= 2; {
			l := 2 + int(s[1])
			out = append(out, s[2:l])
			s = s[l:]
		}
		return out
	}
	b := r.body()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 8 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				break
			}
			out = append(out, string(v))
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			break
		}
		b = b[m:]
	}
	return out
}

// namesRun returns where the body's action names are, [start, end), when
// they are one run of canonical entries (a one-byte tag, a one-byte
// length): what deterministic encoding writes. ok is false otherwise.
func namesRun(body []byte) (start, end int, ok bool) {
	start = -1
	for i := 0; i < len(body); {
		num, typ, n := protowire.ConsumeTag(body[i:])
		if n < 0 {
			return 0, 0, false
		}
		m := protowire.ConsumeFieldValue(num, typ, body[i+n:])
		if m < 0 {
			return 0, 0, false
		}
		if num == 8 {
			switch {
			case start >= 0 && end != i: // a second run
				return 0, 0, false
			case n != 1 || typ != protowire.BytesType || body[i+1] >= 0x80 || m != 1+int(body[i+1]): // not canonical
				return 0, 0, false
			case start < 0:
				start = i
			}
			end = i + n + m
		}
		i += n + m
	}
	return start, end, start >= 0
}

// shareNames returns a copy of r whose action names are kept apart as the
// string intern returns for them, so that records naming the same actions
// share one copy; r itself when it names none, or when its names are not
// one canonical run or something of it aliases them. The copy's wire form
// (Proto) is r's, byte for byte.
func (r *Record) shareNames(intern func(run []byte) string) *Record {
	if r.digestAt == 0 || r.names != "" {
		return r
	}
	body := r.body()
	start, end, ok := namesRun(body)
	if !ok {
		return r
	}
	// Everything else the record aliases must lie outside the run.
	outside := func(at, n int) bool { return at >= 0 && (at+n <= start || at >= end) }
	cp := r.Credential.Proto()
	credAt, sigAt := bytes.Index(body, cp.Body), bytes.Index(body, cp.Signature)
	digestAt := int(r.digestAt) - 1
	if len(cp.Body) == 0 || !outside(credAt, len(cp.Body)) || !outside(sigAt, len(cp.Signature)) || !outside(digestAt, 32) {
		return r
	}
	addrAt := make([]int, len(r.addrs))
	for i, a := range r.addrs {
		if addrAt[i] = bytes.Index(body, a); !outside(addrAt[i], len(a)) {
			return r
		}
	}
	cut := end - start
	moved := func(at int) int {
		if at >= end {
			return at - cut
		}
		return at
	}
	buf := make([]byte, 0, len(r.buf)-cut)
	buf = append(append(append(buf, body[:start]...), body[end:]...), r.sig()...)
	n := len(body) - cut
	nb := buf[:n:n]
	at := func(at, l int) []byte { at = moved(at); return nb[at : at+l : at+l] }
	cred, err := trust.CredentialFromProto(&trustpb.Signed{Body: at(credAt, len(cp.Body)), Signature: at(sigAt, len(cp.Signature))})
	if err != nil {
		return r
	}
	out := &Record{Agent: r.Agent, Credential: cred, Seq: r.Seq, Interval: r.Interval, Timestamp: r.Timestamp,
		buf: buf, n: uint32(n), digestAt: uint32(moved(digestAt)) + 1, names: intern(body[start:end]), namesAt: uint32(start)}
	if len(r.addrs) > 0 {
		out.addrs = make([][]byte, len(r.addrs))
		for i, a := range r.addrs {
			out.addrs[i] = at(addrAt[i], len(a))
		}
	}
	return out
}

// AdvertDigest returns the SHA-256 of the agent's advertisement, and
// whether the record advertises anything.
func (r *Record) AdvertDigest() ([32]byte, bool) {
	if r.digestAt == 0 {
		return [32]byte{}, false
	}
	return [32]byte(r.buf[r.digestAt-1 : r.digestAt+31]), true
}

// within returns the slice of buf equal to sub, or sub itself when buf
// does not hold it.
func within(buf, sub []byte) []byte {
	if len(sub) == 0 {
		return sub
	}
	if i := bytes.Index(buf, sub); i >= 0 {
		return buf[i : i+len(sub) : i+len(sub)]
	}
	return sub
}

// Addrs returns the addresses the agent announced (checked when the record
// was parsed).
func (r *Record) Addrs() []ma.Multiaddr {
	out := make([]ma.Multiaddr, 0, len(r.addrs))
	for _, ab := range r.addrs {
		if m, err := ma.NewMultiaddrBytes(ab); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// NumAddrs returns how many addresses the record carries.
func (r *Record) NumAddrs() int { return len(r.addrs) }

// Proto returns the wire form. Its byte slices may be the record's own: do
// not modify them.
func (r *Record) Proto() *protocolpb.Announcement {
	return &protocolpb.Announcement{Body: r.body(), Signature: r.sig()}
}

// body returns the signed body: a new slice when the names are kept
// apart, else the record's own.
func (r *Record) body() []byte {
	if r.names == "" {
		return r.buf[:r.n:r.n]
	}
	at := r.namesAt
	b := make([]byte, 0, int(r.n)+len(r.names))
	return append(append(append(b, r.buf[:at]...), r.names...), r.buf[at:r.n]...)
}

// sig returns the signature.
func (r *Record) sig() []byte { return r.buf[r.n:] }

// bodyEqual reports whether b is the record's signed body, without
// building it.
func (r *Record) bodyEqual(b []byte) bool {
	if r.names == "" {
		return string(r.buf[:r.n]) == string(b)
	}
	at, l := int(r.namesAt), len(r.names)
	return len(b) == int(r.n)+l && string(b[:at]) == string(r.buf[:at]) &&
		string(b[at:at+l]) == r.names && string(b[at+l:]) == string(r.buf[at:r.n])
}

// DomainLeave prefixes the signature of a leave: the same constant as
// wire.DomainLeave, kept here for its callers.
const DomainLeave = wire.DomainLeave

// agentSeqMessage is what a leave or a heartbeat signs.
func agentSeqMessage(agent trust.PublicKey, seq uint64, ts int64) []byte {
	b := make([]byte, 0, trust.PublicKeySize+16)
	b = append(b, agent[:]...)
	b = binary.BigEndian.AppendUint64(b, seq)
	return binary.BigEndian.AppendUint64(b, uint64(ts))
}

// SignLeave makes a leave of id with sequence number seq, which any node
// can verify and relay.
func SignLeave(id *trust.Identity, seq uint64, now time.Time) *protocolpb.Leave {
	k := id.Public()
	ts := now.UnixNano()
	return &protocolpb.Leave{Seq: seq, Timestamp: ts, Agent: publicBytes(k), Signature: id.Sign(wire.DomainLeave, agentSeqMessage(k, seq, ts))}
}

// VerifyLeave checks a leave's signature and returns who is leaving.
func VerifyLeave(l *protocolpb.Leave) (trust.PublicKey, error) {
	if l == nil {
		return trust.PublicKey{}, protocol.Reject(trust.CodeMalformed, "no leave")
	}
	k, err := trust.PublicKeyFromBytes(l.Agent)
	if err != nil {
		return k, err
	}
	if !k.Verify(wire.DomainLeave, agentSeqMessage(k, l.Seq, l.Timestamp), l.Signature) {
		return k, protocol.Reject(trust.CodeBadSignature, "leave of %s: signature does not verify", k)
	}
	return k, nil
}

// DomainBeat prefixes the signature of a heartbeat: the same constant as
// wire.DomainBeat, kept here for its callers.
const DomainBeat = wire.DomainBeat

// SignBeat makes a heartbeat of id with sequence number seq at now
// (millisecond precision), which any node can verify and relay.
func SignBeat(id *trust.Identity, seq uint64, now time.Time) *protocolpb.Beat {
	k := id.Public()
	ts := now.UnixMilli()
	return &protocolpb.Beat{Agent: publicBytes(k), Seq: seq, Timestamp: ts, Signature: id.Sign(wire.DomainBeat, agentSeqMessage(k, seq, ts))}
}

// VerifyBeat checks a heartbeat's signature and returns its agent and time.
func VerifyBeat(b *protocolpb.Beat) (trust.PublicKey, time.Time, error) {
	if b == nil {
		return trust.PublicKey{}, time.Time{}, protocol.Reject(trust.CodeMalformed, "no heartbeat")
	}
	k, err := trust.PublicKeyFromBytes(b.Agent)
	if err != nil {
		return k, time.Time{}, err
	}
	if !k.Verify(wire.DomainBeat, agentSeqMessage(k, b.Seq, b.Timestamp), b.Signature) {
		return k, time.Time{}, protocol.Reject(trust.CodeBadSignature, "heartbeat of %s: signature does not verify", k)
	}
	return k, time.UnixMilli(b.Timestamp), nil
}
