package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// maxSyncSize bounds one sync response.
const maxSyncSize = 32 << 20

// handleSync answers the join-time exchange, and the revocations pull
// (the same response without records), to admitted peers only.
func (n *Node) handleSync(s network.Stream) {
	defer s.Close()
	p := s.Conn().RemotePeer()
	k, err := trust.PublicKeyFromPeerID(p)
	if err != nil || n.registry.Admit(k, n.now()) != nil || !n.serveAllowed(p, s.Protocol()) {
		s.Reset()
		return
	}
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	var snap []*protocolpb.Announcement
	if s.Protocol() == wire.ProtocolSync {
		snap = n.registry.Snapshot()
		if rec, err := n.currentRecord(); err == nil {
			snap = append(snap, rec.Proto())
		}
	}
	b, err := proto.Marshal(&protocolpb.SyncResponse{Announcements: snap, Revocations: n.revs.All()})
	if err != nil || msgio.NewVarintWriter(s).WriteMsg(b) != nil {
		s.Reset()
	}
}

// serveBurst and serveEvery bound the sync answers (and revocation pulls)
// one peer gets: an honest node asks at admission, once more three gossip
// heartbeats later, and at most once a heartbeat after that, for each.
const serveBurst = 4

// serveAllowed reports whether p may have another answer of protocol
// which now; past serveBurst it gets one a heartbeat.
func (n *Node) serveAllowed(p peer.ID, which p2pprotocol.ID) bool {
	return n.live.serving.Allow(string(p) + string(which))
}

// resyncOnce asks p, the first peer that admitted this node, for its
// records and revocations a second time three gossip heartbeats later: a
// revocation published before gossipsub grafted the new node into its mesh
// is neither forwarded to it nor offered in gossip, and must not be missed.
func (n *Node) resyncOnce(p peer.ID) {
	if !n.live.resynced.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTimer(3 * gossipParams(n.cfg.HeartbeatInterval).HeartbeatInterval)
		defer t.Stop()
		select {
		case <-n.ctx.Done():
		case <-t.C:
			n.syncFrom(p)
		}
	}()
}

// syncSoon runs syncFrom(p) unless one ran for p within a heartbeat.
func (n *Node) syncSoon(p peer.ID) {
	if n.due(n.live.lastSync, p) {
		go n.syncFrom(p)
	}
}

// pullSoon asks p for its revocations unless it did within a heartbeat.
func (n *Node) pullSoon(p peer.ID) {
	if n.due(n.live.lastPull, p) {
		go n.fetch(p, wire.ProtocolRevocations)
	}
}

// due reports whether p's entry in the rate-limit map m is at least a
// heartbeat old, and if so sets it to now. Past 1024 peers, m forgets the
// entries older than a heartbeat, which no longer limit anything.
func (n *Node) due(m map[peer.ID]time.Time, p peer.ID) bool {
	n.live.mu.Lock()
	defer n.live.mu.Unlock()
	now, hb := time.Now(), n.cfg.HeartbeatInterval
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
func (n *Node) syncFrom(p peer.ID) { n.fetch(p, wire.ProtocolSync) }

func (n *Node) fetch(p peer.ID, which p2pprotocol.ID) {
	h := n.host()
	if h == nil || n.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.AdmissionTimeout)
	defer cancel()
	s, err := h.NewStream(ctx, p, which)
	if err != nil {
		return
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(n.cfg.AdmissionTimeout))
	raw, err := readGrowing(s, maxSyncSize)
	if err != nil {
		s.Reset()
		return
	}
	var resp protocolpb.SyncResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return
	}
	n.applySync(p, &resp)
}

// maxRefusedPerAnswer bounds the items of one sync answer this node
// refuses for its own configuration or state (not the responder's fault,
// so not charged): past it, the rest of the answer is dropped. An honest
// answer has few (an anchor being rotated in, an allowlist narrower than
// the responder's); what it misses comes again by gossip.
const maxRefusedPerAnswer = 64

// applySync applies what p answered to a sync fetch.
func (n *Node) applySync(p peer.ID, resp *protocolpb.SyncResponse) {
	// An item broken or forged in itself is the responder's doing (an
	// honest node serves only what it verified): it is charged for it and
	// the rest of the answer is dropped.
	refused := 0
	fault := func(kind audit.Kind, err error) bool {
		code := trust.CodeOf(err)
		n.blame(p, kind, code) // audited and charged when it is p's fault
		if err != nil {
			refused++
		}
		return forwarderFault[code] || refused > maxRefusedPerAnswer
	}
	for _, r := range resp.Revocations {
		if fault(audit.Revocation, n.applyRevocation(r)) {
			return
		}
	}
	now := n.now()
	learned := false
	for _, a := range resp.Announcements {
		rec, key, err := n.records.Check(a, trust.PublicKey{})
		if fault(audit.Announcement, err) {
			return
		}
		if err != nil || rec == nil {
			continue
		}
		evs, err := n.registry.Announce(rec, discovery.Relayed, now)
		n.bad.Add(key, err)
		n.emit(evs)
		learned = learned || len(evs) > 0
		if fault(audit.Announcement, err) { // a forged credential in the record
			break
		}
	}
	if learned {
		n.beats.LinkSoon() // agents to link to, if this node has too few links
	}
}

// readGrowing reads one length-prefixed frame of at most max bytes, its
// buffer growing with the bytes that arrive: a peer that announces a large
// frame and sends little makes the node hold what it sent, not what it
// announced.
func readGrowing(r io.Reader, max int) ([]byte, error) {
	br := bufio.NewReaderSize(r, 4096)
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, msgio.ErrMsgTooLarge
	}
	buf, err := io.ReadAll(io.LimitReader(br, int64(n)))
	if err != nil {
		return nil, err
	}
	if uint64(len(buf)) != n {
		return nil, io.ErrUnexpectedEOF
	}
	return buf, nil
}
