package gate

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
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
