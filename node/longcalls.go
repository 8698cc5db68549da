package node

// Long calls: per-action handler timeouts, per-call timeouts, the caller's
// cancellation reaching the handler, and signed progress messages.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node/internal/frame"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// MaxTimeout bounds a per-call timeout (CallOptions.Timeout) and a
// per-action handler timeout (HandlerOptions.Timeout).
const MaxTimeout = time.Hour

// Bounds on the progress messages of one call. A handler's Request.Progress
// refuses past them; a caller fails the call with code progress_bound when a
// callee goes past them (it is charged nothing for the callee's doing).
const (
	MaxProgressPerCall = 256      // progress messages before the reply
	MaxProgressBody    = 16 << 10 // bytes of one progress message's body
	// maxProgressEnvelope is the largest progress envelope a caller
	// takes: the body and the envelope's own fields (no token).
	maxProgressEnvelope = MaxProgressBody + 1<<10
)

// ErrCallerCancelled is the cause (context.Cause) of a handler's context
// when the caller gave up on the call: it cancelled it, its deadline passed,
// or its connection went away.
var ErrCallerCancelled = errors.New("node: the caller gave up on the call")

// ErrCallDone is what Request.Progress returns once the call was answered.
var ErrCallDone = errors.New("node: the call was already answered")

// HandlerOptions adjust the handler of one action.
type HandlerOptions struct {
	// Timeout bounds one run of the handler; zero is Config.HandlerTimeout.
	// At most MaxTimeout.
	Timeout time.Duration
}

// HandleWith is Handle with options for the action's handler.
func (n *Node) HandleWith(action string, h Handler, opts HandlerOptions) error {
	if err := trust.ValidateScope(action); err != nil {
		return err
	}
	if opts.Timeout < 0 || opts.Timeout > MaxTimeout {
		return fmt.Errorf("node: handler timeout %s: want 0 (the default) to %s", opts.Timeout, MaxTimeout)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.handlerTimeouts == nil {
		n.handlerTimeouts = map[string]time.Duration{}
	}
	delete(n.handlerTimeouts, action)
	if h == nil {
		delete(n.handlers, action)
		return nil
	}
	n.handlers[action] = h
	if opts.Timeout > 0 {
		n.handlerTimeouts[action] = opts.Timeout
	}
	return nil
}

// handler returns the handler of action and how long it may run.
func (n *Node) handler(action string) (Handler, time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d, ok := n.handlerTimeouts[action]; ok {
		return n.handlers[action], d
	}
	return n.handlers[action], n.cfg.HandlerTimeout
}

// callTimeout is how long a call with opts may take.
func (n *Node) callTimeout(opts *CallOptions) (time.Duration, error) {
	switch {
	case opts.Timeout < 0 || opts.Timeout > MaxTimeout:
		return 0, protocol.Reject(trust.CodeMalformed, "call timeout %s: want 0 (the default) to %s", opts.Timeout, MaxTimeout)
	case opts.Timeout > 0:
		return opts.Timeout, nil
	}
	return n.cfg.CallTimeout, nil
}

// Progress is a verified progress message of a call, before its reply.
type Progress struct {
	From          peer.ID
	Body          []byte
	CorrelationID protocol.CorrelationID
	Seq           int // 1 for the first of the call
}

// Progress sends a signed progress message with body to the caller, before
// the reply: at most MaxProgressPerCall per call, each body at most
// MaxProgressBody bytes. It returns ErrCallDone once the handler returned.
func (r *Request) Progress(ctx context.Context, body []byte) error {
	if r.progress == nil {
		return errors.New("node: this request has no caller to send progress to")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return r.progress.send(body)
}

// progressSink writes one call's progress messages on its stream, and
// keeps them from crossing the reply.
type progressSink struct {
	n      *Node
	s      network.Stream
	to     trust.PublicKey
	action string
	corr   protocol.CorrelationID

	mu   sync.Mutex
	sent int
	done bool
}

func (p *progressSink) send(body []byte) error {
	if len(body) > MaxProgressBody {
		return fmt.Errorf("node: a progress message is at most %d bytes, not %d", MaxProgressBody, len(body))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return ErrCallDone
	}
	if p.sent >= MaxProgressPerCall {
		return fmt.Errorf("node: at most %d progress messages per call", MaxProgressPerCall)
	}
	raw, err := protocol.Seal(p.n.cfg.Identity, &protocol.Envelope{Kind: protocol.KindProgress, RecipientPeer: p.to,
		Action: p.action, Payload: body, CorrelationID: p.corr}, p.n.now())
	if err != nil {
		return err
	}
	if err := msgio.NewVarintWriter(p.s).WriteMsg(raw); err != nil {
		return fmt.Errorf("node: sending progress: %w", err)
	}
	p.sent++
	return nil
}

// finish stops progress messages: the reply follows.
func (p *progressSink) finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
}

// watchCaller cancels the handler's context when the caller gives up: a
// caller keeps its side of the stream open until it has the reply, and
// resets the stream when it cancels or its deadline passes (or its
// connection goes away). A caller that closed its side (an older one) or
// the end of the call (this node closed the stream) ends the watch. A
// caller that writes anything after its request breaks the protocol: that
// is taken as giving up too.
func watchCaller(s network.Stream, cancel context.CancelCauseFunc) {
	var b [1]byte
	if _, err := s.Read(b[:]); errors.Is(err, io.EOF) {
		return
	}
	cancel(ErrCallerCancelled)
}

// readReply reads the callee's progress messages, then its reply, on s.
// Every envelope passes the decision function (from the callee, to this
// node, progress, reply or error) and must keep the request's correlation
// ID; past MaxProgressPerCall progress messages, or one over
// maxProgressEnvelope bytes, the call fails with progress_bound. On any
// failure the stream is reset, which tells the callee the call is over.
func (n *Node) readReply(s network.Stream, to peer.ID, toKey trust.PublicKey, env *protocol.Envelope, opts *CallOptions, readErr func(error) error) (*protocol.Envelope, error) {
	kinds := []protocol.Kind{protocol.KindReply, protocol.KindError, protocol.KindProgress}
	for seq, first := 0, true; ; first = false {
		// One frame at a time, nothing read past it: the stream may carry
		// the next call.
		resp, err := frame.ReadExact(s, n.cfg.MaxEnvelopeSize)
		if err == nil && len(resp) == 0 && first {
			err = errGoodbye // the callee closed the idle stream unread
		}
		if err != nil {
			s.Reset()
			return nil, readErr(err)
		}
		if seq >= MaxProgressPerCall {
			// The next must be the reply: a progress envelope is refused
			// before any check that costs.
			kinds = kinds[:2]
		}
		re, err := n.decider.Decide(resp, protocol.Expect{Kinds: kinds, Peer: n.self, From: toKey}, n.now())
		if err != nil {
			s.Reset()
			if len(kinds) == 2 && re != nil && re.Kind == protocol.KindProgress {
				return nil, protocol.Reject(protocol.CodeProgressBound, "%s sent more than %d progress messages on one call", to, MaxProgressPerCall)
			}
			return nil, replyRefused(to, err)
		}
		if re.CorrelationID != env.CorrelationID {
			s.Reset()
			return nil, protocol.Reject(trust.CodeMalformed, "%s correlation ID %s does not match %s", re.Kind, re.CorrelationID, env.CorrelationID)
		}
		if re.Kind != protocol.KindProgress {
			return re, nil
		}
		if len(resp) > maxProgressEnvelope {
			s.Reset()
			return nil, protocol.Reject(protocol.CodeProgressBound, "%s sent a progress message of %d bytes, at most %d", to, len(resp), maxProgressEnvelope)
		}
		seq++
		if opts.OnProgress != nil {
			opts.OnProgress(Progress{From: to, Body: re.Payload, CorrelationID: re.CorrelationID, Seq: seq})
		}
	}
}
