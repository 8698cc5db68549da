package node

// Reused call streams (issue 15). A caller keeps its idle
// wire.ProtocolRPC2 streams per peer and sends call after call on them,
// one at a time: a stream is busy from request to reply, then idle in the
// pool; a call that finds none idle opens a new one, so that no call waits
// behind another. The callee serves request after request on each stream,
// every one a signed envelope checked on its own by the decision function,
// and checks the gate again before each.

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node/internal/frame"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Bounds on reused streams.
const (
	// poolIdle is how long a caller keeps an idle stream: less than
	// serveIdle, so that an honest caller closes its idle streams before
	// the callee does.
	poolIdle = 20 * time.Second
	// poolPerPeer and poolMax bound the idle streams a caller keeps, per
	// peer and in all; past them a stream is closed after its call. They
	// hold outbound RPC slots of the resource manager (1 024 per
	// protocol), of which poolMax leaves most to calls.
	poolPerPeer = 16
	poolMax     = 256
	// serveIdle is how long a callee waits for the next request on a
	// stream; then it says goodbye and closes it.
	serveIdle = 30 * time.Second
	// serveIdlePerPeer bounds the streams of one peer that a callee keeps
	// waiting for a next request; a stream past it is closed (goodbye)
	// after its call.
	serveIdlePerPeer = 32
	// callAttempts bounds the streams one call tries: a reused stream
	// that the callee closed under it (goodbye, or a failed write: the
	// request was not read whole, so no handler ran) is dropped and the
	// call goes on another; the last attempt opens a new one.
	callAttempts = 3
)

// streamPool holds a caller's idle reused streams, per peer, newest last.
type streamPool struct {
	mu     sync.Mutex
	idle   map[peer.ID][]idleStream
	total  int
	closed bool
}

type idleStream struct {
	s     network.Stream
	since time.Time
}

func newStreamPool() *streamPool { return &streamPool{idle: map[peer.ID][]idleStream{}} }

// get takes the newest idle stream to p that is still usable, or nil.
func (sp *streamPool) get(p peer.ID, now time.Time) network.Stream {
	var drop []network.Stream
	var got network.Stream
	sp.mu.Lock()
	l := sp.idle[p]
	for len(l) > 0 && got == nil {
		e := l[len(l)-1]
		l = l[:len(l)-1]
		sp.total--
		if now.Sub(e.since) >= poolIdle || e.s.Conn().IsClosed() {
			drop = append(drop, e.s)
			continue
		}
		got = e.s
	}
	if len(l) == 0 {
		delete(sp.idle, p)
	} else {
		sp.idle[p] = l
	}
	sp.mu.Unlock()
	for _, s := range drop {
		s.Close()
	}
	return got
}

// put keeps s, idle since now, or closes it when the pool is full or
// closed.
func (sp *streamPool) put(p peer.ID, s network.Stream, now time.Time) {
	sp.mu.Lock()
	if sp.closed || sp.total >= poolMax || len(sp.idle[p]) >= poolPerPeer {
		sp.mu.Unlock()
		s.Close()
		return
	}
	sp.idle[p] = append(sp.idle[p], idleStream{s: s, since: now})
	sp.total++
	sp.mu.Unlock()
}

// sweep closes the streams idle for poolIdle or whose connection closed;
// all of them once closing.
func (sp *streamPool) sweep(now time.Time, closing bool) {
	var drop []network.Stream
	sp.mu.Lock()
	sp.closed = sp.closed || closing
	for p, l := range sp.idle {
		k := l[:0]
		for _, e := range l {
			if closing || now.Sub(e.since) >= poolIdle || e.s.Conn().IsClosed() {
				drop = append(drop, e.s)
				continue
			}
			k = append(k, e)
		}
		sp.total -= len(l) - len(k)
		if len(k) == 0 {
			delete(sp.idle, p)
		} else {
			sp.idle[p] = k
		}
	}
	sp.mu.Unlock()
	for _, s := range drop {
		s.Close()
	}
}

// idleCount returns how many idle streams the pool holds.
func (sp *streamPool) idleCount() int {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.total
}

// run sweeps the pool until ctx ends, then closes every stream in it.
func (sp *streamPool) run(ctx context.Context) {
	t := time.NewTicker(poolIdle / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sp.sweep(time.Now(), true)
			return
		case now := <-t.C:
			sp.sweep(now, false)
		}
	}
}

// errGoodbye is a callee's empty frame in place of a reply: it closed the
// idle stream and read nothing of the request.
var errGoodbye = errors.New("node: the callee closed the idle stream")

// writeFrame writes b as one uvarint-length-prefixed frame, in one write.
func writeFrame(w io.Writer, b []byte) error {
	var hdr [10]byte
	k := putUvarint(hdr[:], uint64(len(b)))
	buf := make([]byte, 0, k+len(b))
	buf = append(append(buf, hdr[:k]...), b...)
	_, err := w.Write(buf)
	return err
}

func putUvarint(b []byte, x uint64) int {
	i := 0
	for x >= 0x80 {
		b[i] = byte(x) | 0x80
		x >>= 7
		i++
	}
	b[i] = byte(x)
	return i + 1
}

// prefixed is a reader that returns b first, then reads r.
type prefixed struct {
	b    byte
	done bool
	r    io.Reader
}

func (p *prefixed) Read(out []byte) (int, error) {
	if p.done || len(out) == 0 {
		return p.r.Read(out)
	}
	out[0], p.done = p.b, true
	return 1, nil
}

// isTimeout reports whether err is a passed deadline. (Unwrapped by
// hand: errors.As costs microseconds, and it runs at the end of every
// call on a reused stream.)
func isTimeout(err error) bool {
	for err != nil {
		if t, ok := err.(interface{ Timeout() bool }); ok && t.Timeout() {
			return true
		}
		if err == os.ErrDeadlineExceeded {
			return true
		}
		err = errors.Unwrap(err)
	}
	return false
}

// idStrings caches the text form of the peer IDs a node audits calls
// with: base58 costs microseconds, and every call audits one on each
// side. Bounded: emptied when it reaches maxIDStrings.
type idStrings struct {
	mu sync.Mutex
	m  map[peer.ID]string
}

const maxIDStrings = 4096

// idString is p.String(), cached.
func (n *Node) idString(p peer.ID) string {
	c := &n.ids
	c.mu.Lock()
	s, ok := c.m[p]
	c.mu.Unlock()
	if ok {
		return s
	}
	s = p.String()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxIDStrings {
		c.m = map[peer.ID]string{}
	}
	c.m[p] = s
	c.mu.Unlock()
	return s
}

// idleStreams counts, per peer, the inbound streams waiting for a next
// request (serveIdlePerPeer).
type idleStreams struct {
	mu      sync.Mutex
	m       map[peer.ID]int
	timeout atomic.Int64 // serveIdle when zero (tests shorten it)
}

// wait is how long a stream waits for its next request.
func (c *idleStreams) wait() time.Duration {
	if d := time.Duration(c.timeout.Load()); d > 0 {
		return d
	}
	return serveIdle
}

func (c *idleStreams) enter(p peer.ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[peer.ID]int{}
	}
	if c.m[p] >= serveIdlePerPeer {
		return false
	}
	c.m[p]++
	return true
}

func (c *idleStreams) leave(p peer.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[p]--; c.m[p] <= 0 {
		delete(c.m, p)
	}
}

// count returns the idle inbound streams of p.
func (c *idleStreams) count(p peer.ID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[p]
}

// goodbye closes an idle stream: an empty frame first tells the caller
// that nothing it sent from now on is read.
func goodbye(s network.Stream) {
	_ = s.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := s.Write([]byte{0}); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

// handleRPC2 serves the calls of one wire.ProtocolRPC2 stream, one after
// another, until the caller closes it, it stays idle serveIdle, or a call
// breaks it. Before each request after the first (which passed the gate
// with the stream), the peer must still pass the gate: listed, not
// refused, not throttled; else the stream is reset unread.
func (n *Node) handleRPC2(s network.Stream) {
	remote := s.Conn().RemotePeer()
	for first := true; ; first = false {
		wait := time.Now().Add(n.cfg.HandlerTimeout + time.Second)
		if !first {
			if !n.rpcIdle.enter(remote) {
				goodbye(s)
				return
			}
			wait = time.Now().Add(n.rpcIdle.wait())
		}
		_ = s.SetReadDeadline(wait)
		var b [1]byte
		_, err := io.ReadFull(s, b[:])
		if !first {
			n.rpcIdle.leave(remote)
		}
		switch {
		case err == nil:
		case first:
			n.frameRefused(remote, err)
			s.Reset()
			return
		case isTimeout(err):
			goodbye(s)
			return
		case errors.Is(err, io.EOF): // the caller closed it
			s.Close()
			return
		default:
			s.Reset()
			return
		}
		start := time.Now()
		if !first && (!n.isAdmitted(remote) || n.gate.Refused(remote)) {
			n.gate.CountGated() // as a new stream would be, at the gate
			s.Reset()
			return
		}
		if n.gate.Throttled(remote) {
			s.Reset() // unchecked: it spent its rejection budget
			return
		}
		_ = s.SetDeadline(start.Add(n.cfg.HandlerTimeout + time.Second))
		raw, err := frame.ReadExact(&prefixed{b: b[0], r: s}, n.cfg.MaxEnvelopeSize)
		if err != nil {
			n.frameRefused(remote, err)
			s.Reset()
			return
		}
		out, keep := n.answer(s, remote, raw, start, true)
		if out == nil {
			s.Reset()
			return
		}
		if err := writeFrame(s, out); err != nil {
			s.Reset()
			return
		}
		if !keep {
			s.Close()
			return
		}
	}
}

// callWatch watches the caller of one call on a reused stream: a reset
// (the caller gave up), its side closed, or a byte it should not have
// sent cancels or ends the stream's use; stop ends the watch. The watch
// starts watchAfter into the call: a handler that answers sooner costs no
// goroutine and no wake-up, and a caller's cancel reaches a longer one at
// most watchAfter late.
type callWatch struct {
	s      network.Stream
	cancel context.CancelCauseFunc
	timer  *time.Timer

	mu      sync.Mutex
	stopped bool          // stop was called
	done    chan struct{} // the watch started; closed when it ended
	clean   bool          // set before done closes: stopped with nothing read
}

// watchAfter is how long into a call the watch of its caller starts.
const watchAfter = time.Millisecond

func watchReused(s network.Stream, cancel context.CancelCauseFunc) *callWatch {
	w := &callWatch{s: s, cancel: cancel}
	w.timer = time.AfterFunc(watchAfter, w.watch)
	return w
}

func (w *callWatch) watch() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	done := make(chan struct{})
	w.done = done
	w.mu.Unlock()
	defer close(done)
	var b [1]byte
	_, err := w.s.Read(b[:])
	w.mu.Lock()
	stopping := w.stopped
	w.mu.Unlock()
	switch {
	case err != nil && stopping && isTimeout(err):
		w.clean = true
	case errors.Is(err, io.EOF):
		// The caller closed its side: this call stands, no next one.
	default:
		w.cancel(ErrCallerCancelled)
	}
}

// stop ends the watch (a read deadline now interrupts it) and reports
// whether the stream may carry the next call.
func (w *callWatch) stop() bool {
	w.mu.Lock()
	w.stopped = true
	done := w.done
	w.mu.Unlock()
	if done == nil { // never started, and now never will
		w.timer.Stop()
		return true
	}
	_ = w.s.SetReadDeadline(time.Now())
	<-done
	return w.clean
}

// reusable reports whether s speaks the reused-stream protocol.
func reusable(s network.Stream) bool { return s.Protocol() == wire.ProtocolRPC2 }

// send sends the sealed request raw to `to` and returns its verified
// reply (or error reply), on an idle reused stream when there is one, else
// on a new stream (wire.ProtocolRPC2, or wire.ProtocolRPC with an older
// callee). A stream goes back to the pool only when the call read its
// reply whole and was not cancelled meanwhile.
func (n *Node) send(ctx context.Context, to peer.ID, toKey trust.PublicKey, env *protocol.Envelope, raw []byte, opts *CallOptions) (*protocol.Envelope, error) {
	for attempt := 1; ; attempt++ {
		var s network.Stream
		if attempt < callAttempts {
			s = n.pool.get(to, time.Now())
		}
		reused := s != nil
		if s == nil {
			var err error
			if s, err = n.host().NewStream(ctx, to, wire.ProtocolRPC2, wire.ProtocolRPC); err != nil {
				return nil, protocol.Reject(protocol.CodeUnavailable, "open stream to %s: %v", to, err)
			}
		}
		re, err := n.callOn(ctx, s, reused, to, toKey, env, raw, opts)
		if reused && errors.Is(err, errGoodbye) {
			continue // nothing of the request was read: another stream
		}
		return re, err
	}
}

// callOn makes the call on s. A reused stream that the callee closed
// under the call gives errGoodbye: no handler ran.
func (n *Node) callOn(ctx context.Context, s network.Stream, reused bool, to peer.ID, toKey trust.PublicKey, env *protocol.Envelope, raw []byte, opts *CallOptions) (*protocol.Envelope, error) {
	deadline, _ := ctx.Deadline()
	_ = s.SetDeadline(deadline)
	if err := writeFrame(s, raw); err != nil {
		s.Reset()
		if reused && ctx.Err() == nil {
			// A reused stream closed under us: the request did not
			// leave whole, so the callee cannot have decided it.
			return nil, errGoodbye
		}
		return nil, protocol.Reject(protocol.CodeUnavailable, "send to %s: %v", to, err)
	}
	// The write side stays open until the reply: a reset of the stream is
	// how the callee learns that this caller gave up (watchCaller).
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	re, err := n.readReply(s, to, toKey, env, opts, func(err error) error {
		if errors.Is(err, errGoodbye) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		}
		return protocol.Reject(protocol.CodeUnavailable, "no reply from %s: %v", to, err)
	})
	if !stop() || err != nil {
		// Cancelled (the stream was reset, perhaps mid-frame) or failed:
		// never back to the pool.
		s.Reset()
		return re, err
	}
	if !reusable(s) {
		s.Close()
		return re, nil
	}
	_ = s.SetDeadline(time.Time{})
	n.pool.put(to, s, time.Now())
	return re, nil
}
