package discovery

import (
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// State is an agent's liveness as this node sees it.
type State int

// States.
const (
	Alive State = iota + 1
	Suspect
	Dead
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	}
	return "unknown"
}

// MarshalText returns the state's name, as String does, and "" for 0 (not
// listed). It is what a State field (Entry.State) encodes to in JSON or
// YAML.
func (s State) MarshalText() ([]byte, error) {
	switch s {
	case 0:
		return []byte{}, nil
	case Alive, Suspect, Dead:
		return []byte(s.String()), nil
	}
	return nil, fmt.Errorf("discovery: no state %d", int(s))
}

// UnmarshalText parses what MarshalText returns: "alive", "suspect",
// "dead", or "" for 0.
func (s *State) UnmarshalText(b []byte) error {
	for _, st := range []State{0, Alive, Suspect, Dead} {
		if t, _ := st.MarshalText(); string(t) == string(b) {
			*s = st
			return nil
		}
	}
	return fmt.Errorf("discovery: no state %q", b)
}

// Config configures a Registry.
type Config struct {
	// Verifier checks credentials (anchors, expiry, revocation). Required.
	Verifier *trust.Verifier
	// Self is this node's own key: always admitted.
	Self trust.PublicKey
	// SuspectMissed is how many heartbeat intervals may pass without a
	// heartbeat before an agent is suspect. Default 2.
	SuspectMissed int
	// DeadAfter is how long without a heartbeat before an agent is dead.
	// Default 90 s (three 30 s heartbeats).
	DeadAfter time.Duration
	// MaxEntries bounds the registry; new agents are refused beyond it.
	// Default 100 000 (a few KiB each).
	MaxEntries int
	// Allowlist, when not empty, narrows the registry to these agents.
	Allowlist []trust.PublicKey
}

// Event is a change of an agent's state as this node sees it.
type Event struct {
	Agent  trust.PublicKey
	Name   string
	From   State // 0 when the agent was not listed
	To     State // 0 when the agent was removed
	Reason string
	At     time.Time
}

// Entry is what the registry holds of one agent.
type Entry struct {
	PeerID        peer.ID   `json:"peer_id"`
	Name          string    `json:"name"`
	State         State     `json:"state"` // encodes as alive, suspect or dead
	LastHeartbeat time.Time `json:"last_heartbeat"`
	Expires       time.Time `json:"credential_expires"`
	Seq           uint64    `json:"seq"`
	// Actions are the scopes the agent advertises (its signed record's).
	Actions []string `json:"actions"`
	// AdvertDigest is the hex SHA-256 of its advertisement, when it
	// advertises anything: the key of the fetched advertisement.
	AdvertDigest string `json:"advert_digest,omitempty"`
}

// entry is what the registry keeps of one agent (one per agent per node,
// so small: Entries builds the view).
type entry struct {
	rec       *Record
	seq       uint64 // highest heartbeat or leave sequence number
	lastHeard time.Time
	state     State
}

// Registry is this node's list of agents and their liveness. Safe for
// concurrent use. It implements protocol.Membership.
type Registry struct {
	cfg   Config
	allow map[trust.PublicKey]bool

	mu      sync.RWMutex
	entries map[trust.PublicKey]*entry
	// names holds one copy of each run of action names that records
	// held carry, shared by those records, with how many hold it. Agents
	// that serve the same actions (replicas of one service) then cost
	// the registry their names once. Never shared with another registry.
	names map[string]*sharedNames
}

type sharedNames struct {
	s    string
	refs int
}

// NewRegistry returns an empty registry.
func NewRegistry(cfg Config) *Registry {
	if cfg.SuspectMissed <= 0 {
		cfg.SuspectMissed = 2
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = 90 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 100000
	}
	r := &Registry{cfg: cfg, entries: map[trust.PublicKey]*entry{}, names: map[string]*sharedNames{}}
	if len(cfg.Allowlist) > 0 {
		r.allow = map[trust.PublicKey]bool{}
		for _, k := range cfg.Allowlist {
			r.allow[k] = true
		}
	}
	return r
}

// Allowed reports whether the allowlist (when there is one) names agent.
func (r *Registry) Allowed(agent trust.PublicKey) bool { return r.allow == nil || r.allow[agent] }

// Source says how a record or heartbeat reached this node.
type Source int

// Sources.
const (
	// Direct: from the agent itself (the pubsub author, or the
	// TLS-authenticated peer of the admission exchange). It counts as a
	// heartbeat.
	Direct Source = iota + 1
	// Relayed: from a third node (the join-time exchange). It tells who
	// exists, never who is alive: a dead agent stays dead.
	Relayed
)

// Announce applies a verified record. A record with a sequence number not
// above the one held is a replay, except an identical re-send, which is a
// no-op.
func (r *Registry) Announce(rec *Record, src Source, now time.Time) ([]Event, error) {
	if rec.Agent.Equal(r.cfg.Self) {
		return nil, nil
	}
	if r.allow != nil && !r.allow[rec.Agent] {
		return nil, protocol.Reject(protocol.CodeUnlisted, "%s is not on this node's allowlist", rec.Agent)
	}
	if err := r.checkCredential(rec, now); err != nil {
		return nil, err
	}
	fresh := now.Sub(rec.Timestamp) <= r.cfg.DeadAfter && rec.Timestamp.Sub(now) <= r.cfg.DeadAfter
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[rec.Agent]
	if !ok {
		if len(r.entries) >= r.cfg.MaxEntries {
			return nil, protocol.Reject(trust.CodeFull, "registry holds %d agents, its limit", r.cfg.MaxEntries)
		}
		if !fresh && src == Direct {
			return nil, protocol.Reject(protocol.CodeStale, "record of %s is from %s", rec.Agent, rec.Timestamp.UTC().Format(time.RFC3339))
		}
		e = &entry{rec: r.keepLocked(rec), state: Alive, lastHeard: now}
		r.entries[rec.Agent] = e
		return []Event{{Agent: rec.Agent, Name: rec.Credential.Name, To: Alive, Reason: "joined", At: now}}, nil
	}
	if rec.Seq < e.rec.Seq || (rec.Seq == e.rec.Seq && src == Direct && !sameRecord(rec, e.rec)) {
		return nil, protocol.Reject(protocol.CodeReplay, "record of %s has seq %d, already at %d", rec.Agent, rec.Seq, e.rec.Seq)
	}
	if rec.Seq == e.rec.Seq {
		return nil, nil // the same record again: no news, and no sign of life
	}
	r.releaseLocked(e.rec)
	e.rec = r.keepLocked(rec)
	// A record is a sign of life only when it is newer than the last
	// heartbeat: an older one, resent, proves nothing about now.
	if src == Direct && fresh && rec.Seq > e.seq {
		e.seq = rec.Seq
		return r.heardLocked(e, now, "announce"), nil
	}
	return nil, nil
}

// checkCredential verifies rec's credential. One byte for byte the same as
// the credential of the record held for the agent had its signature checked
// when that record was applied (the anchors do not change), so only its
// validity window and revocation are checked again: an agent re-announces
// with the same credential until it renews it.
func (r *Registry) checkCredential(rec *Record, now time.Time) error {
	r.mu.RLock()
	e, ok := r.entries[rec.Agent]
	same := ok && e.rec.Credential.Equal(rec.Credential)
	r.mu.RUnlock()
	if same {
		return r.cfg.Verifier.RecheckCredential(rec.Credential, now)
	}
	return r.cfg.Verifier.VerifyCredential(rec.Credential, now)
}

// sameRecord reports whether rec is the record held, held.
func sameRecord(rec, held *Record) bool { return held.bodyEqual(rec.body()) }

// keepLocked returns what the registry keeps of rec: a copy whose action
// names share the registry's copy of the same names, if any.
func (r *Registry) keepLocked(rec *Record) *Record {
	return rec.shareNames(func(run []byte) string {
		if sn, ok := r.names[string(run)]; ok {
			sn.refs++
			return sn.s
		}
		sn := &sharedNames{s: string(run), refs: 1}
		r.names[sn.s] = sn
		return sn.s
	})
}

// releaseLocked forgets a record the registry no longer keeps.
func (r *Registry) releaseLocked(rec *Record) {
	if rec.names == "" {
		return
	}
	if sn := r.names[rec.names]; sn != nil {
		if sn.refs--; sn.refs <= 0 {
			delete(r.names, rec.names)
		}
	}
}

// SharedNames returns how many distinct runs of action names the registry
// holds, one copy each.
func (r *Registry) SharedNames() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.names)
}

// heardLocked records a direct sign of life.
func (r *Registry) heardLocked(e *entry, now time.Time, why string) []Event {
	e.lastHeard = now
	if e.state == Alive {
		return nil
	}
	from := e.state
	e.state = Alive
	return []Event{{Agent: e.rec.Agent, Name: e.rec.Credential.Name, From: from, To: Alive, Reason: why, At: now}}
}

// Heartbeat applies a heartbeat whose signature by agent was checked. seq must be above every sequence number seen from the
// agent, its timestamp within DeadAfter of now, and the agent's credential
// still valid.
func (r *Registry) Heartbeat(agent trust.PublicKey, seq uint64, ts, now time.Time) ([]Event, error) {
	if agent.Equal(r.cfg.Self) {
		return nil, nil
	}
	if d := now.Sub(ts); d > r.cfg.DeadAfter || -d > r.cfg.DeadAfter {
		return nil, protocol.Reject(protocol.CodeStale, "heartbeat of %s from %s", agent, ts.UTC().Format(time.RFC3339))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[agent]
	if !ok {
		return nil, protocol.Reject(protocol.CodeUnlisted, "heartbeat of unknown agent %s", agent)
	}
	if seq <= e.rec.Seq || seq <= e.seq {
		return nil, protocol.Reject(protocol.CodeReplay, "heartbeat of %s has seq %d, already at %d", agent, seq, max(e.rec.Seq, e.seq))
	}
	if err := r.cfg.Verifier.RecheckCredential(e.rec.Credential, now); err != nil {
		return nil, err
	}
	e.seq = seq
	return r.heardLocked(e, now, "heartbeat"), nil
}

// Seq returns the highest sequence number seen from agent (0 when it is
// not listed), so that a duplicate heartbeat is dropped before its
// signature is checked.
func (r *Registry) Seq(agent trust.PublicKey) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.entries[agent]; ok {
		return max(e.rec.Seq, e.seq)
	}
	return 0
}

// Holds reports whether the registry already holds exactly this record
// (the same body and signature), so that a re-sent record is dropped before its
// signatures are checked: it would change nothing.
func (r *Registry) Holds(a *protocolpb.Announcement) bool {
	var b protocolpb.AnnouncementBody
	if a == nil || proto.Unmarshal(a.Body, &b) != nil || len(b.Agent) != trust.PublicKeySize {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.entries[trust.PublicKey(b.Agent)]
	return ok && e.rec.bodyEqual(a.Body) && string(e.rec.sig()) == string(a.Signature)
}

// Leave marks agent dead at once: it said it is stopping.
func (r *Registry) Leave(agent trust.PublicKey, seq uint64, now time.Time) ([]Event, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[agent]
	if !ok {
		return nil, nil
	}
	if seq <= e.rec.Seq || seq <= e.seq {
		return nil, protocol.Reject(protocol.CodeReplay, "leave of %s has seq %d, already at %d", agent, seq, max(e.rec.Seq, e.seq))
	}
	e.seq = seq
	if e.state == Dead {
		return nil, nil
	}
	from := e.state
	e.state = Dead
	return []Event{{Agent: agent, Name: e.rec.Credential.Name, From: from, To: Dead, Reason: "leave", At: now}}, nil
}

// Tick applies the passage of time: alive agents that missed SuspectMissed
// heartbeats become suspect, and agents not heard for DeadAfter become
// dead. Agents whose credential has expired or been revoked are removed.
func (r *Registry) Tick(now time.Time) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []Event
	for k, e := range r.entries {
		name := e.rec.Credential.Name
		if err := r.cfg.Verifier.RecheckCredential(e.rec.Credential, now); err != nil {
			r.releaseLocked(e.rec)
			delete(r.entries, k)
			evs = append(evs, Event{Agent: k, Name: name, From: e.state, Reason: string(trust.CodeOf(err)), At: now})
			continue
		}
		silent := now.Sub(e.lastHeard)
		switch {
		case e.state != Dead && silent > r.cfg.DeadAfter:
			evs = append(evs, Event{Agent: k, Name: name, From: e.state, To: Dead, Reason: "timeout", At: now})
			e.state = Dead
		case e.state == Alive && silent > time.Duration(r.cfg.SuspectMissed)*e.rec.Interval:
			evs = append(evs, Event{Agent: k, Name: name, From: Alive, To: Suspect, Reason: "missed heartbeats", At: now})
			e.state = Suspect
		}
	}
	return evs
}

// Excuse tells the registry that this node itself was paused (a long GC
// or VM pause, CPU starvation) for d until now: silence that fell in the
// pause is not the agents' fault, since their heartbeats waited in this
// node's buffers. Every agent's silence is shortened by d (never below
// zero), so that the node does not declare the whole mesh dead as it
// resumes. It delays the detection of a real death by at most d.
func (r *Registry) Excuse(d time.Duration, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		if e.state != Dead {
			e.lastHeard = minTime(e.lastHeard.Add(d), now)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Admit implements protocol.Membership: the sender must be listed, not
// dead, and hold a credential valid now.
func (r *Registry) Admit(sender trust.PublicKey, now time.Time) error {
	if sender.Equal(r.cfg.Self) {
		return nil
	}
	r.mu.RLock()
	e, ok := r.entries[sender]
	var st State
	var exp time.Time
	if ok {
		st, exp = e.state, e.rec.Credential.Expires
	}
	r.mu.RUnlock()
	switch {
	case !ok:
		return protocol.Reject(protocol.CodeUnlisted, "%s is not in the registry", sender)
	case st == Dead:
		return protocol.Reject(protocol.CodeDead, "%s is dead until it heartbeats again", sender)
	case !now.Before(exp.Add(r.cfg.Verifier.Policy().ClockSkew)):
		return protocol.Reject(protocol.CodeUnlisted, "credential of %s expired at %s", sender, exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// AdmitHolder implements protocol.Membership: every holder of a chain (the
// delegators and the leaf) must be listed here, not dead, with a credential
// valid now, as a sender must. A holder this node does not list is refused
// too: a dead agent's credential runs out and the registry forgets it,
// and its dead verdict must not lapse into acceptance then. The cost: a
// chain through an agent that never joined the mesh, or left it for good,
// is refused until that agent joins again (or the token is re-issued).
func (r *Registry) AdmitHolder(holder trust.PublicKey, now time.Time) error {
	err := r.Admit(holder, now)
	if te, ok := err.(*trust.Error); ok {
		te.Detail = "chain holder: " + te.Detail
	}
	return err
}

// State returns the agent's state, 0 if unlisted.
func (r *Registry) State(agent trust.PublicKey) State {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.entries[agent]; ok {
		return e.state
	}
	return 0
}

// Record returns the agent's current record, nil if unlisted.
func (r *Registry) Record(agent trust.PublicKey) *Record {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.entries[agent]; ok {
		return e.rec
	}
	return nil
}

// Entries lists every agent, sorted by name.
func (r *Registry) Entries() []Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Entry, 0, len(r.entries))
	for _, e := range r.entries {
		en := Entry{PeerID: e.rec.Agent.PeerID(), Name: e.rec.Credential.Name, State: e.state,
			LastHeartbeat: e.lastHeard.UTC(), Expires: e.rec.Credential.Expires.UTC(), Seq: max(e.seq, e.rec.Seq), Actions: e.rec.Actions()}
		if d, ok := e.rec.AdvertDigest(); ok {
			en.AdvertDigest = hex.EncodeToString(d[:])
		}
		out = append(out, en)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Name < out[j].Name || out[i].Name == out[j].Name && out[i].PeerID < out[j].PeerID
	})
	return out
}

// Len returns how many agents are listed.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.entries)
}

// Snapshot returns the records of every agent not dead, for the join-time
// exchange.
func (r *Registry) Snapshot() []*protocolpb.Announcement {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*protocolpb.Announcement, 0, len(r.entries))
	for _, e := range r.entries {
		if e.state != Dead {
			out = append(out, e.rec.Proto())
		}
	}
	return out
}
