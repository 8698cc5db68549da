package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node/internal/audit"
	"github.com/meshagent/meshagent/node/internal/frame"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Request is an accepted inbound call, handed to a Handler only after the
// decision function accepted it.
type Request struct {
	From          peer.ID
	Action        string
	Body          []byte
	ContentType   string
	CorrelationID protocol.CorrelationID
	// Traceparent and Tracestate are the caller's W3C trace context, as
	// it signed them: for tracing only, never for a decision.
	Traceparent, Tracestate string

	progress *progressSink // nil outside a call served over the network
}

// Handler serves one action. The returned bytes are the reply body; an
// error becomes an error reply with code handler_error and the error text,
// except a busy one (protocol.Busy), which the caller gets as busy with
// its retry-after: a handler that sheds load says so. At most
// Config.MaxConcurrentCalls handlers run at once. ctx ends when the
// handler's timeout passes or the caller gives up (context.Cause(ctx) is
// then ErrCallerCancelled); req.Progress sends progress messages meanwhile.
type Handler func(ctx context.Context, req *Request) ([]byte, error)

// Handle registers h for action (a scope such as read:logs), replacing any
// earlier handler; a nil h removes it (calls are then answered
// no_handler).
func (n *Node) Handle(action string, h Handler) error {
	return n.HandleWith(action, h, HandlerOptions{})
}

// Reply is the verified reply to a call.
type Reply struct {
	From          peer.ID
	Body          []byte
	ContentType   string
	CorrelationID protocol.CorrelationID
}

// CallOptions adjust one call.
type CallOptions struct {
	Token         *trust.Token           // nil: the first held token granting the action
	CorrelationID protocol.CorrelationID // zero: a new one; set it for onward calls
	ContentType   string
	// Timeout bounds the call, reply included; zero is Config.CallTimeout.
	// At most MaxTimeout. A deadline of ctx that comes sooner wins.
	Timeout time.Duration
	// Traceparent and Tracestate, when set, are carried signed in the
	// request (W3C trace context; protocol.CheckTraceContext's bounds).
	Traceparent, Tracestate string
	// OnProgress, when set, is called with each verified progress message
	// of the callee, in order, before Call returns.
	OnProgress func(Progress)
}

// Call sends a signed request for action to peer to and waits for the
// signed reply. A rejection by the remote node (or of its reply by this
// one) is a *trust.Error whose Code says why: errors.Is(err,
// protocol.ErrReplay) and friends work. A node that sheds load (the
// callee, or this one refusing the reply for its own capacity) answers
// busy: protocol.RetryAfter(err) then says when to try again.
func (n *Node) Call(ctx context.Context, to peer.ID, action string, body []byte, opts *CallOptions) (*Reply, error) {
	if opts == nil {
		opts = &CallOptions{}
	}
	h := n.host()
	if h == nil {
		return nil, ErrNotStarted
	}
	toKey, err := trust.PublicKeyFromPeerID(to)
	if err != nil {
		return nil, err
	}
	tok := opts.Token
	if tok == nil {
		tok = n.tokenFor(action)
	}
	if err := protocol.CheckTraceContext(opts.Traceparent, opts.Tracestate); err != nil {
		return nil, err
	}
	env := &protocol.Envelope{Kind: protocol.KindRequest, RecipientPeer: toKey, Action: action, Payload: body,
		ContentType: opts.ContentType, CorrelationID: opts.CorrelationID, Token: tok,
		Traceparent: opts.Traceparent, Tracestate: opts.Tracestate}
	raw, err := protocol.Seal(n.cfg.Identity, env, n.now())
	if err != nil {
		return nil, err
	}
	return n.roundTrip(ctx, to, toKey, env, raw, opts)
}

func (n *Node) roundTrip(ctx context.Context, to peer.ID, toKey trust.PublicKey, env *protocol.Envelope, raw []byte, opts *CallOptions) (*Reply, error) {
	start := time.Now()
	rec := n.record(audit.Out, audit.Request, n.idString(to))
	rec.CorrelationID, rec.Action = env.CorrelationID.String(), env.Action
	rec.Traceparent, rec.Tracestate = env.Traceparent, env.Tracestate
	reply, err := n.exchange(ctx, to, toKey, env, raw, opts)
	rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		reject(&rec, codeOrDefault(err, protocol.CodeUnavailable), errDetail(err))
	} else {
		rec.Decision = audit.Accept
	}
	n.audit.Write(rec)
	return reply, err
}

func (n *Node) exchange(ctx context.Context, to peer.ID, toKey trust.PublicKey, env *protocol.Envelope, raw []byte, opts *CallOptions) (*Reply, error) {
	h := n.host()
	limit, err := n.callTimeout(opts)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > limit {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	if h.Network().Connectedness(to) != network.Connected {
		// Not a neighbour: dial the addresses from its registry record.
		if rec := n.registry.Record(toKey); rec != nil {
			h.Peerstore().AddAddrs(to, rec.Addrs(), peerstore.TempAddrTTL)
		}
	}
	if !n.isAdmitted(to) {
		if err := n.admission.Admit(ctx, to); err != nil {
			return nil, protocol.Reject(protocol.CodeUnavailable, "%v", err)
		}
	}
	re, err := n.send(ctx, to, toKey, env, raw, opts)
	if err != nil {
		return nil, err
	}
	if re.Kind == protocol.KindError {
		code, detail := re.ErrorCode, re.ErrorDetail
		if !protocol.KnownCode(code) { // the callee's choice: not a new audit reason or metric series
			code, detail = protocol.CodeUnknown, fmt.Sprintf("code %.64q: %s", re.ErrorCode, detail)
		}
		if code == protocol.CodeBusy {
			return nil, protocol.Busy(retryAfter(re.RetryAfter), "%s is busy: %s", to, detail)
		}
		return nil, &trust.Error{Code: code, Link: -1, Detail: "rejected by " + to.String() + ": " + detail}
	}
	return &Reply{From: to, Body: re.Payload, ContentType: re.ContentType, CorrelationID: re.CorrelationID}, nil
}

// replyRefused is the error of a call whose reply this node refused. A
// refusal for this node's own capacity (its replay guard full: busy,
// replay_full, full) is no fault of the callee's and is not reported as
// one: it is busy, here, with a retry-after. The callee may have run the
// call: its reply was signed and on time.
func replyRefused(to peer.ID, err error) error {
	switch trust.CodeOf(err) {
	case protocol.CodeBusy, protocol.CodeReplayFull, trust.CodeFull:
		d, _ := protocol.RetryAfter(err)
		return protocol.Busy(retryAfter(d), "this node is busy: it refused the reply of %s for its own capacity, not %s's doing (the call may have run there): %s",
			to, to, trust.DetailOf(err))
	}
	return fmt.Errorf("node: reply from %s rejected: %w", to, err)
}

// handleRPC serves one inbound request stream (wire.ProtocolRPC, which
// older callers speak): read one frame within the size limit, decide, run
// the handler only on acceptance, reply signed.
func (n *Node) handleRPC(s network.Stream) {
	start := time.Now()
	remote := s.Conn().RemotePeer()
	if n.gate.Throttled(remote) {
		s.Reset() // unchecked: it spent its rejection budget
		return
	}
	_ = s.SetDeadline(start.Add(n.cfg.HandlerTimeout + time.Second))
	raw, err := frame.ReadGrowing(s, n.cfg.MaxEnvelopeSize) // what arrives, not what the header claims
	if err != nil {
		n.frameRefused(remote, err)
		s.Reset()
		return
	}
	out, _ := n.answer(s, remote, raw, start, false)
	if out == nil || writeFrame(s, out) != nil {
		s.Reset()
		return
	}
	s.Close()
}

// frameRefused charges and audits a request frame that could not be read
// (too large, truncated).
func (n *Node) frameRefused(remote peer.ID, err error) {
	code := trust.CodeMalformed
	if errors.Is(err, msgio.ErrMsgTooLarge) {
		code = trust.CodeTooLarge
	}
	n.gate.Penalize(remote, code)
	r := n.record(audit.In, audit.Request, remote.String())
	reject(&r, code, err.Error())
	n.audit.Write(r)
}

// answer decides the request raw that remote sent on s, runs its handler
// on acceptance, audits the call, and returns the sealed reply (nil: reset
// the stream) and whether s may carry another call (reuse: s speaks
// wire.ProtocolRPC2).
func (n *Node) answer(s network.Stream, remote peer.ID, raw []byte, start time.Time, reuse bool) ([]byte, bool) {
	remoteKey, kerr := trust.PublicKeyFromPeerID(remote)
	var env *protocol.Envelope
	var err error
	if kerr != nil {
		err = kerr
	} else {
		env, err = n.decider.Decide(raw, protocol.Expect{Kinds: []protocol.Kind{protocol.KindRequest}, Peer: n.self, From: remoteKey}, n.now())
	}
	rec := n.record(audit.In, audit.Request, n.idString(remote))
	if env != nil {
		rec.CorrelationID, rec.Action = env.CorrelationID.String(), env.Action
		rec.Traceparent, rec.Tracestate = env.Traceparent, env.Tracestate
	}
	var reply *protocol.Envelope
	keep := reuse
	if err != nil {
		code := codeOrDefault(err, trust.CodeMalformed)
		n.gate.Penalize(remote, code) // nothing for a refusal of this node's own (receiverSide)
		reply = n.refusal(env, remoteKey, err)
		reject(&rec, code, err.Error())
	} else {
		reply, keep = n.serve(env, remote, remoteKey, &rec, s, reuse)
	}
	rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
	n.audit.Write(rec)
	if reply == nil {
		return nil, false
	}
	out, err := protocol.Seal(n.cfg.Identity, reply, n.now())
	if err != nil {
		return nil, false
	}
	return out, keep
}

// serve runs the handler of an accepted request, within the node's bound
// on handler runs, and returns the reply; it sets rec's verdict. On a
// reused stream (reuse) it also reports whether s may carry the next call:
// not when the caller closed its side or gave up meanwhile.
func (n *Node) serve(env *protocol.Envelope, from peer.ID, fromKey trust.PublicKey, rec *AuditRecord, s network.Stream, reuse bool) (*protocol.Envelope, bool) {
	h, timeout := n.handler(env.Action)
	if h == nil {
		reject(rec, protocol.CodeNoHandler, "")
		return n.errorReply(env, fromKey, protocol.CodeNoHandler, "no handler for "+env.Action), reuse
	}
	select {
	case n.calls <- struct{}{}:
		defer func() { <-n.calls }()
	default:
		// Shed, not queued: the caller hears at once when to try again,
		// and the node holds nothing for it. (Audited as a rejection: its
		// lines are bounded per caller, as accepted ones are not.)
		err := protocol.Busy(callsBusyRetry, "%d calls running at once, the most this node runs", cap(n.calls))
		reject(rec, protocol.CodeBusy, err.Error())
		return n.refusal(env, fromKey, err), reuse
	}
	// The stream lives as long as the handler may run, and the reply's
	// write a second more.
	_ = s.SetDeadline(time.Now().Add(timeout + time.Second))
	gone, cancelGone := context.WithCancelCause(n.ctx)
	defer cancelGone(nil)
	var watch *callWatch
	if reuse {
		watch = watchReused(s, cancelGone)
	} else {
		go watchCaller(s, cancelGone)
	}
	ctx, cancel := context.WithTimeout(gone, timeout)
	sink := &progressSink{n: n, s: s, to: fromKey, action: env.Action, corr: env.CorrelationID}
	body, herr := h(ctx, &Request{From: from, Action: env.Action, Body: env.Payload, ContentType: env.ContentType,
		CorrelationID: env.CorrelationID, Traceparent: env.Traceparent, Tracestate: env.Tracestate, progress: sink})
	sink.finish()
	cancel()
	keep := watch != nil && watch.stop()
	if context.Cause(gone) == ErrCallerCancelled && herr == nil {
		// Its reply would reach no one; the audit says why.
		herr = ErrCallerCancelled
	}
	if _, busy := protocol.RetryAfter(herr); busy {
		// The handler sheds load itself (the daemon's, when its local
		// process is behind): busy, not handler_error.
		reject(rec, protocol.CodeBusy, herr.Error())
		return n.refusal(env, fromKey, herr), keep
	}
	if herr != nil {
		rec.Decision, rec.Reason, rec.Detail = audit.Accept, string(protocol.CodeHandlerError), herr.Error()
		return n.errorReply(env, fromKey, protocol.CodeHandlerError, herr.Error()), keep
	}
	rec.Decision = audit.Accept
	return &protocol.Envelope{Kind: protocol.KindReply, RecipientPeer: fromKey, Action: env.Action,
		Payload: body, CorrelationID: env.CorrelationID}, keep
}

// Retry-afters of busy answers.
const (
	// callsBusyRetry is what a node at MaxConcurrentCalls asks (a slot
	// frees as soon as any handler returns), and what a busy refusal that
	// names no time is given.
	callsBusyRetry = 250 * time.Millisecond
	// maxRetryAfter caps what a callee may ask a caller to wait: its
	// word, not this node's.
	maxRetryAfter = time.Minute
)

// retryAfter is d within (0, maxRetryAfter]; none at all is
// callsBusyRetry.
func retryAfter(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return callsBusyRetry
	case d > maxRetryAfter:
		return maxRetryAfter
	}
	return d
}

// refusal is the error reply to req for err: its code and detail, and the
// time to wait when err is busy.
func (n *Node) refusal(req *protocol.Envelope, to trust.PublicKey, err error) *protocol.Envelope {
	reply := n.errorReply(req, to, trust.CodeOf(err), trust.DetailOf(err))
	if d, busy := protocol.RetryAfter(err); busy && reply != nil {
		reply.RetryAfter = retryAfter(d)
	}
	return reply
}

// errorReply builds a signed error reply. For a request that did not even
// decode there is no correlation ID to answer: the stream is reset instead.
func (n *Node) errorReply(req *protocol.Envelope, to trust.PublicKey, code trust.Code, detail string) *protocol.Envelope {
	if req == nil || to.IsZero() {
		return nil
	}
	if code == "" {
		code = trust.CodeMalformed
	}
	return &protocol.Envelope{Kind: protocol.KindError, RecipientPeer: to, Action: req.Action,
		CorrelationID: req.CorrelationID, ErrorCode: code, ErrorDetail: detail}
}

// AddToken adds a capability token this agent holds.
func (n *Node) AddToken(t *trust.Token) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cfg.Tokens = append(append([]*trust.Token(nil), n.cfg.Tokens...), t)
}

// Tokens returns the capability tokens this agent holds.
func (n *Node) Tokens() []*trust.Token {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*trust.Token(nil), n.cfg.Tokens...)
}
