package node

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pubsubpb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// A table full of busy sources (each with a handshake in flight) does not
// lock out a new source: it is let through untracked, bounded only by the
// node's connection limits. (Before, every new source was refused for 15 s.)
func TestFullSourceTableLocksNoOneOut(t *testing.T) {
	s := newSources()
	addr := func(i int) ma.Multiaddr {
		return ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", i>>16&0xff, i>>8&0xff, i&0xff))
	}
	for i := range maxSources {
		if !s.allow(addr(i)) {
			t.Fatalf("source %d refused on its first connection", i)
		}
	}
	if !s.allow(addr(maxSources + 1)) {
		t.Fatal("a new source is refused while the table is full of busy ones")
	}
	// A known source keeps its bound.
	for range sourceBurst {
		s.allow(addr(7))
	}
	if s.allow(addr(7)) {
		t.Fatal("a source past its budget in flight is let through")
	}
}

type trickle struct{ b []byte }

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, t.b)
	t.b = t.b[n:]
	return n, nil
}

// A sync answer that announces 32 MiB and sends 10 bytes makes the node
// allocate about what arrived, not what was announced.
func TestReadGrowingAllocatesWhatArrives(t *testing.T) {
	frame := binary.AppendUvarint(nil, maxSyncSize)
	frame = append(frame, bytes.Repeat([]byte{1}, 10)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := readGrowing(&trickle{b: frame}, maxSyncSize)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("a short frame was read whole")
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("reading a 10-byte frame that announced %d bytes allocated %d bytes", maxSyncSize, grew)
	}
	full := append(binary.AppendUvarint(nil, 5), "hello"...)
	if got, err := readGrowing(&trickle{b: full}, maxSyncSize); err != nil || string(got) != "hello" {
		t.Fatalf("a whole frame: %q, %v", got, err)
	}
	if _, err := readGrowing(&trickle{b: binary.AppendUvarint(nil, maxSyncSize+1)}, maxSyncSize); err == nil {
		t.Fatal("a frame over the limit was accepted")
	}
}

// A peer charged lately gets no more messages of one RPC checked than its
// budget has left, and none once throttled; an uncharged peer's RPCs pass
// whole.
func TestInspectRPCCapsChargedPeers(t *testing.T) {
	n, other, _ := nodeListing(t, time.Second)
	from := other.PeerID()
	rpcOf := func(k int) *pubsub.RPC {
		r := &pubsub.RPC{}
		for range k {
			r.Publish = append(r.Publish, &pubsubpb.Message{Data: []byte("x")})
		}
		return r
	}
	r := rpcOf(400)
	if err := n.inspectRPC(from, r); err != nil || len(r.Publish) != 400 {
		t.Fatalf("an uncharged peer's RPC: %d of 400 kept, %v", len(r.Publish), err)
	}
	for range rejectBurst - 5 {
		n.members.penalize(from, protocol.CodeNoToken)
	}
	r = rpcOf(400)
	_ = n.inspectRPC(from, r)
	if len(r.Publish) > 6 {
		t.Fatalf("a peer with about 5 rejections left: %d of 400 messages kept", len(r.Publish))
	}
	for range 10 {
		n.members.penalize(from, protocol.CodeNoToken)
	}
	r = rpcOf(400)
	_ = n.inspectRPC(from, r)
	if len(r.Publish) != 0 {
		t.Fatalf("a throttled peer: %d of 400 messages kept", len(r.Publish))
	}
}

// New records of a listed agent are checked at most recordBurst at once
// and one a heartbeat; past that they are refused before their signature
// check (here the signatures are broken: the refusal says flood, not
// bad_signature), so an insider's record flood costs each node little and
// is not relayed.
func TestRecordFloodRefusedBeforeTheCheck(t *testing.T) {
	n, other, cred := nodeListing(t, time.Hour) // a heartbeat of an hour: no refill during the test
	now := time.Now()
	var codes []trust.Code
	for i := range 10 {
		rec, _ := discovery.NewRecord(other, cred, nil, uint64(2+i), time.Second, now)
		a := rec.Proto()
		a.Signature = append([]byte(nil), a.Signature...)
		a.Signature[0] ^= 1
		_, _, err := n.checkRecord(a, other.Public())
		codes = append(codes, trust.CodeOf(err))
	}
	for i, c := range codes {
		want := trust.CodeBadSignature
		if i >= recordBurst {
			want = protocol.CodeFlood
		}
		if c != want {
			t.Fatalf("record %d: %s, want %s (all: %v)", i, c, want, codes)
		}
	}
}

// nodeListing builds a node (not started) with the given heartbeat whose
// registry lists one other agent, by a record of seq 1; it returns the
// node and that agent's identity and credential.
func nodeListing(t *testing.T, hb time.Duration) (*Node, *trust.Identity, *trust.Credential) {
	t.Helper()
	anchor, _ := trust.GenerateAnchorKey(rand.Reader)
	now := time.Now()
	ids := make([]*trust.Identity, 2)
	creds := make([]*trust.Credential, 2)
	for i := range ids {
		ids[i], _ = trust.GenerateIdentity(rand.Reader)
		creds[i], _ = trust.IssueCredential(anchor, ids[i].Public(), fmt.Sprintf("agent-%d", i), now.Add(-time.Second), time.Hour)
	}
	cfg := LocalConfig()
	cfg.HeartbeatInterval, cfg.DeadAfter = hb, 3*hb
	cfg.Identity, cfg.Credential, cfg.Policy = ids[0], creds[0], trust.DefaultPolicy(anchor.Public())
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := discovery.NewRecord(ids[1], creds[1], nil, 1, time.Second, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.registry.Announce(rec, discovery.Direct, now); err != nil {
		t.Fatal(err)
	}
	return n, ids[1], creds[1]
}

// The node-wide bound on connections awaiting admission: past maxPending,
// a new connection replaces the oldest pending one that had its grace,
// else it is refused; each source keeps its own bound.
func TestPendingConnectionsBoundedNodeWide(t *testing.T) {
	s := newSources()
	conns := make([]*fakeConn, 0, maxPending+1)
	for i := range maxPending {
		c := &fakeConn{addr: ma.StringCast(fmt.Sprintf("/ip4/10.0.%d.%d/tcp/1", i/250, i%250+1))}
		if ev, ok := s.open(c, time.Hour); !ok || ev != nil {
			t.Fatalf("connection %d: ok %v, evicted %v", i, ok, ev)
		}
		conns = append(conns, c)
	}
	late := &fakeConn{addr: ma.StringCast("/ip4/10.9.9.9/tcp/1")}
	if ev, ok := s.open(late, 0); ok || ev != nil {
		t.Fatalf("full of sources with one pending each: ok %v, evicted %v; want refused, none evicted", ok, ev)
	}
	// A source with several pending gives way, once past the grace; the
	// oldest of the source with the most goes first.
	flood := ma.StringCast("/ip4/10.8.8.8/tcp/1")
	s.done(conns[0])
	s.done(conns[1])
	var first network.Conn
	for i := range 2 {
		c := &fakeConn{addr: flood}
		if _, ok := s.open(c, time.Hour); !ok {
			t.Fatal("refused with room")
		}
		if i == 0 {
			first = c
		}
	}
	if _, ok := s.open(late, time.Hour); ok {
		t.Fatal("a connection past maxPending was taken while every candidate is within its grace")
	}
	ev, ok := s.open(late, 0)
	if !ok || ev != first {
		t.Fatalf("past the grace: ok %v, evicted %v, want the flood's oldest", ok, ev)
	}
	if len(s.conns) != maxPending || s.done(first) {
		t.Fatalf("%d pending; the evicted connection is still counted", len(s.conns))
	}
	// One source alone stops at pendingPerSource.
	s = newSources()
	for i := range pendingPerSource + 1 {
		_, ok := s.open(&fakeConn{addr: ma.StringCast("/ip4/10.1.1.1/tcp/1")}, 0)
		if ok != (i < pendingPerSource) {
			t.Fatalf("connection %d of one source: ok %v", i, ok)
		}
	}
}

// fakeConn is a network.Conn with only a remote address.
type fakeConn struct {
	network.Conn
	addr ma.Multiaddr
}

func (c *fakeConn) RemoteMultiaddr() ma.Multiaddr { return c.addr }
