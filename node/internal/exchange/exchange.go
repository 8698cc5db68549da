// Package exchange is the join-time exchange: a node asks a peer that
// admitted it (and then any peer at most once a heartbeat) for the records
// and revocations it holds, and a neighbour whose revocation digest
// differs for its revocations. What comes back is checked as relayed: it
// teaches who exists, never who is alive.
package exchange

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/frame"
	"github.com/meshagent/meshagent/node/internal/refused"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Deps is what the exchange needs of the node.
type Deps struct {
	Registry *discovery.Registry
	Host     func() host.Host
	Clock    func() time.Time
	// Timeout bounds one exchange (the admission timeout).
	Timeout           time.Duration
	HeartbeatInterval time.Duration
	// ResyncAfter is when the second exchange with the first peer runs.
	ResyncAfter time.Duration
	// Own returns this node's current record, served with the others.
	Own func() (*discovery.Record, error)
	// Revocations returns the revocations this node holds, encoded.
	Revocations func() [][]byte
	// ServeAllowed reports whether p may have another answer of protocol
	// which now.
	ServeAllowed func(p peer.ID, which p2pprotocol.ID) bool
	// ApplyRevocation and Check apply a revocation and check a record of
	// an answer; Refused remembers final verdicts.
	ApplyRevocation func(raw []byte) error
	Check           func(a *protocolpb.Announcement, author trust.PublicKey) (*discovery.Record, [32]byte, error)
	Refused         *refused.Cache
	// Blame audits and charges p for an item it should have refused;
	// Charged says which codes those are (the answer is then dropped).
	Blame   func(p peer.ID, kind audit.Kind, code trust.Code) bool
	Charged func(code trust.Code) bool
	// Emit handles registry events; LinkSoon asks the overlay for links
	// when an answer taught agents.
	Emit     func([]discovery.Event)
	LinkSoon func()
}

// Exchange runs the exchanges. Its methods are safe for concurrent use.
type Exchange struct {
	d        Deps
	ctx      context.Context
	mu       sync.Mutex
	lastSync map[peer.ID]time.Time
	lastPull map[peer.ID]time.Time
	resynced atomic.Bool // ResyncOnce ran
}

// New returns the exchange; it asks nothing until Start.
func New(d Deps) *Exchange {
	return &Exchange{d: d, ctx: context.Background(), lastSync: map[peer.ID]time.Time{}, lastPull: map[peer.ID]time.Time{}}
}

// Start lets the exchange ask; its fetches end with ctx. Call it once,
// before the handler is registered.
func (x *Exchange) Start(ctx context.Context) { x.ctx = ctx }

// maxSyncSize bounds one sync response.
const maxSyncSize = 32 << 20

// Handle answers the join-time exchange, and the revocations pull
// (the same response without records), to admitted peers only.
func (x *Exchange) Handle(s network.Stream) {
	defer s.Close()
	p := s.Conn().RemotePeer()
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil || x.d.Registry.Admit(k, x.d.Clock()) != nil || !x.d.ServeAllowed(p, s.Protocol()) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(x.d.Timeout))
	var snap []*protocolpb.Announcement
	if s.Protocol() == wire.ProtocolSync {
		snap = x.d.Registry.Snapshot()
		if rec, err := x.d.Own(); err == nil {
			snap = append(snap, rec.Proto())
		}
	}
	b, err := proto.Marshal(&protocolpb.SyncResponse{Announcements: snap, Revocations: x.d.Revocations()})
	if err != nil || msgio.NewVarintWriter(s).WriteMsg(b) != nil {
		s.Reset()
	}
}

// ResyncOnce asks p, the first peer that admitted this node, for its
// records and revocations a second time three gossip heartbeats later: a
// revocation published before gossipsub grafted the new node into its mesh
// is neither forwarded to it nor offered in gossip, and must not be missed.
func (x *Exchange) ResyncOnce(p peer.ID) {
	if !x.resynced.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTimer(x.d.ResyncAfter)
		defer t.Stop()
		select {
		case <-x.ctx.Done():
		case <-t.C:
			x.syncFrom(p)
		}
	}()
}

// SyncSoon runs syncFrom(p) unless one ran for p within a heartbeat.
func (x *Exchange) SyncSoon(p peer.ID) {
	if x.due(x.lastSync, p) {
		go x.syncFrom(p)
	}
}

// PullSoon asks p for its revocations unless it did within a heartbeat.
func (x *Exchange) PullSoon(p peer.ID) {
	if x.due(x.lastPull, p) {
		go x.fetch(p, wire.ProtocolRevocations)
	}
}

// due reports whether p's entry in the rate-limit map m is at least a
// heartbeat old, and if so sets it to now. Past 1024 peers, m forgets the
// entries older than a heartbeat, which no longer limit anything.
func (x *Exchange) due(m map[peer.ID]time.Time, p peer.ID) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	now, hb := time.Now(), x.d.HeartbeatInterval
	if now.Sub(m[p]) < hb {
		return false
	}
	m[p] = now
	if len(m) > 1024 {
		for q, t := range m {
			if now.Sub(t) >= hb {
				delete(m, q)
			}
		}
	}
	return true
}

// syncFrom asks p for its records and revocations and applies them as
// relayed: they teach who exists, never who is alive.
func (x *Exchange) syncFrom(p peer.ID) { x.fetch(p, wire.ProtocolSync) }

func (x *Exchange) fetch(p peer.ID, which p2pprotocol.ID) {
	h := x.d.Host()
	if h == nil || x.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(x.ctx, x.d.Timeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, which)
	if err != nil {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(x.d.Timeout))
	raw, err := frame.ReadGrowing(s, maxSyncSize)
	if err != nil {
		s.Reset()
		return
	}
	var resp protocolpb.SyncResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return
	}
	x.Apply(p, &resp)
}

// maxRefusedPerAnswer bounds the items of one sync answer this node
// refuses for its own configuration or state (not the responder's fault,
// so not charged): past it, the rest of the answer is dropped. An honest
// answer has few (an anchor being rotated in, an allowlist narrower than
// the responder's); what it misses comes again by gossip.
const maxRefusedPerAnswer = 64

// Apply applies what p answered to a sync fetch.
func (x *Exchange) Apply(p peer.ID, resp *protocolpb.SyncResponse) {
	// An item broken or forged in itself is the responder's doing (an
	// honest node serves only what it verified): it is charged for it and
	// the rest of the answer is dropped.
	refusals := 0
	fault := func(kind audit.Kind, err error) bool {
		code := trust.CodeOf(err)
		x.d.Blame(p, kind, code) // audited and charged when it is p's fault
		if err != nil {
			refusals++
		}
		return x.d.Charged(code) || refusals > maxRefusedPerAnswer
	}
	for _, r := range resp.Revocations {
		if fault(audit.Revocation, x.d.ApplyRevocation(r)) {
			return
		}
	}
	now := x.d.Clock()
	learned := false
	for _, a := range resp.Announcements {
		rec, key, err := x.d.Check(a, trust.PublicKey{})
		if fault(audit.Announcement, err) {
			return
		}
		if err != nil || rec == nil {
			continue
		}
		evs, err := x.d.Registry.Announce(rec, discovery.Relayed, now)
		x.d.Refused.Add(key, err)
		x.d.Emit(evs)
		learned = learned || len(evs) > 0
		if fault(audit.Announcement, err) { // a forged credential in the record
			break
		}
	}
	if learned {
		x.d.LinkSoon() // agents to link to, if this node has too few links
	}
}
