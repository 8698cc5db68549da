// Package records checks the registry records and leaves that peers send
// or relay, before any reaches the registry: what the node already holds
// or refused costs a hash, what its own configuration refuses costs a
// decode, and a listed agent's new records are rate-limited before their
// signature check.
package records

import (
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/limit"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// Deps is what the intake needs of the node.
type Deps struct {
	Registry *discovery.Registry
	Verifier *trust.Verifier
	// Refused remembers final verdicts on relayed bytes.
	Refused           *refused.Cache
	Clock             func() time.Time
	HeartbeatInterval time.Duration
	// Learn enters a checked record in the registry (and tells the
	// listeners and the overlay).
	Learn func(rec *discovery.Record, src discovery.Source) error
	// Left handles the registry events of an applied leave; news says
	// whether it is to be relayed.
	Left func(evs []discovery.Event, news bool, l *protocolpb.Leave)
}

// Intake checks and applies records and leaves. Its methods are safe for
// concurrent use.
type Intake struct {
	d    Deps
	rate *limit.Keyed // new records per listed agent
}

// New returns an intake.
func New(d Deps) *Intake {
	return &Intake{d: d, rate: limit.New(d.HeartbeatInterval, RecordBurst)}
}

// Check is the part of applying a record a peer sent or relayed that
// comes before the registry: a record the registry holds already is
// nothing new (nil, nil); one whose bytes were refused before is refused
// again for the cost of a hash; otherwise its structure and self-signature
// are checked, and that it is author's when author is set (a pubsub
// author must publish only its own record). key names the bytes for
// remembering a refusal.
func (in *Intake) Check(a *protocolpb.Announcement, author trust.PublicKey) (rec *discovery.Record, key [32]byte, err error) {
	if in.d.Registry.Holds(a) {
		return nil, key, nil
	}
	key = refused.Key("record", author[:], a.GetBody(), a.GetSignature())
	if err := in.d.Refused.Get(key); err != nil {
		return nil, key, err
	}
	if err := in.recordRate(a); err != nil {
		return nil, key, err
	}
	if err := in.refusedUnsigned(a); err != nil {
		return nil, key, err
	}
	rec, err = discovery.ParseRecord(a)
	if err == nil && !author.IsZero() && !rec.Agent.Equal(author) {
		err = protocol.Reject(protocol.CodeImpersonation, "record of %s published by %s", rec.Agent, author)
	}
	if err != nil {
		in.d.Refused.Add(key, err)
		return nil, key, err
	}
	return rec, key, nil
}

// refusedUnsigned refuses, before any signature check, a record this node
// would refuse for its own configuration whatever its signatures: an
// agent off the allowlist, a credential of an anchor it does not trust or
// longer than its policy allows. Such records, which cost an outsider a
// signature each to make, cost the node a decode.
func (in *Intake) refusedUnsigned(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	if !in.d.Registry.Allowed(trust.PublicKey(b.Agent)) {
		return protocol.Reject(protocol.CodeUnlisted, "%s is not on this node's allowlist", trust.PublicKey(b.Agent))
	}
	c, err := trust.CredentialFromProto(b.Credential)
	if err != nil {
		return nil
	}
	if !in.d.Verifier.IsAnchor(c.Issuer) {
		return protocol.Reject(trust.CodeUntrustedRoot, "credential issuer %s is not a trusted anchor", c.Issuer)
	}
	if max := in.d.Verifier.Policy().MaxCredentialLifetime; c.Expires.Sub(c.NotBefore) > max {
		return protocol.Reject(trust.CodeLifetime, "credential lifetime %s exceeds the maximum %s", c.Expires.Sub(c.NotBefore), max)
	}
	return nil
}

// RecordBurst and one a heartbeat bound the new records of one listed
// agent that this node checks: an honest agent signs a new record when it
// starts, renews, changes addresses, after admissions (at most every tenth
// beat) and every sixtieth beat. Each new record costs a signature check
// at every node it reaches; past the bound it is refused before the check
// and not relayed. Records of agents not listed yet (joins) are not
// limited here.
const RecordBurst = 4

// recordRate refuses a new record of a listed agent past its rate, before
// any signature check.
func (in *Intake) recordRate(a *protocolpb.Announcement) error {
	var b protocolpb.AnnouncementBody
	if proto.Unmarshal(a.GetBody(), &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return nil // ParseRecord says what is wrong
	}
	agent := trust.PublicKey(b.Agent)
	if in.d.Registry.State(agent) == 0 || b.Seq <= in.d.Registry.Seq(agent) {
		return nil // a join, or an old record: checked (and cached) as before
	}
	ok := in.rate.Allow(string(agent[:]))
	if !ok {
		return protocol.Reject(protocol.CodeFlood, "new records of %s past %d at once and one a heartbeat", agent, RecordBurst)
	}
	return nil
}

// Apply checks a record (Check) and enters it in the registry
// (learn), remembering a final refusal.
func (in *Intake) Apply(a *protocolpb.Announcement, src discovery.Source, author trust.PublicKey) error {
	rec, key, err := in.Check(a, author)
	if err != nil || rec == nil {
		return err
	}
	if err := in.d.Learn(rec, src); err != nil {
		in.d.Refused.Add(key, err)
		return err
	}
	return nil
}

// ApplyLeave applies a leave, and relays it on the beat overlay when it
// was news. A leave of an agent this node does not list, or one not newer
// than the agent's last sequence number, changes nothing and is dropped
// before its signature is checked.
func (in *Intake) ApplyLeave(l *protocolpb.Leave) (news bool, err error) {
	agent, err := trust.PublicKeyFromBytes(l.GetAgent())
	if err != nil {
		return false, err
	}
	if in.d.Registry.State(agent) == 0 {
		return false, protocol.Reject(protocol.CodeUnlisted, "leave of %s, which this node does not list", agent)
	}
	if seq := in.d.Registry.Seq(agent); l.GetSeq() <= seq {
		return false, protocol.Reject(protocol.CodeReplay, "leave of %s has seq %d, already at %d", agent, l.GetSeq(), seq)
	}
	if _, err := discovery.VerifyLeave(l); err != nil {
		return false, err
	}
	evs, err := in.d.Registry.Leave(agent, l.Seq, in.d.Clock())
	in.d.Left(evs, err == nil && len(evs) > 0, l)
	return len(evs) > 0, err
}
