package main

// Long calls over the local API (issue 14 section 4): per-action call and
// handler timeouts from the config and flags, /v1/send with a timeout and
// a stream of progress events, progress and cancellation for /v1/handle
// processes.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// actionTimeout is one entry of the config's timeouts: list.
type actionTimeout struct {
	Action  string        `yaml:"action"`
	Call    time.Duration `yaml:"call"`    // this daemon's calls of it, when /v1/send gives no timeout
	Handler time.Duration `yaml:"handler"` // how long its local handler may take to reply
}

// timeouts are the per-action timeouts of a daemon. The zero value gives
// every action the defaults.
type timeouts struct {
	call, handler map[string]time.Duration
}

// callTimeout is how long a call of action waits when the caller does not
// say.
func (t timeouts) callTimeout(action string) time.Duration {
	if d, ok := t.call[action]; ok {
		return d
	}
	return defaultCallTimeout
}

// handlerTimeout is how long the local handler of action may take; 0 is
// the node's default.
func (t timeouts) handlerTimeout(action string) time.Duration { return t.handler[action] }

// checkTimeout refuses a timeout outside (0, node.MaxTimeout].
func checkTimeout(d time.Duration) error {
	if d <= 0 || d > node.MaxTimeout {
		return fmt.Errorf("%s: want more than 0 and at most %s", d, node.MaxTimeout)
	}
	return nil
}

// parseTimeouts checks the config's timeouts and then the flags'
// (ACTION=DURATION each, overriding the config's for that action).
func parseTimeouts(list []actionTimeout, callFlags, handlerFlags []string) (timeouts, error) {
	t := timeouts{call: map[string]time.Duration{}, handler: map[string]time.Duration{}}
	for _, e := range list {
		if err := trust.ValidateScope(e.Action); err != nil {
			return t, fmt.Errorf("config: timeouts: %v", err)
		}
		if e.Call == 0 && e.Handler == 0 {
			return t, fmt.Errorf("config: timeouts: %s: give call, handler or both", e.Action)
		}
		for _, x := range []struct {
			d    time.Duration
			name string
			m    map[string]time.Duration
		}{{e.Call, "call", t.call}, {e.Handler, "handler", t.handler}} {
			if x.d == 0 {
				continue
			}
			if err := checkTimeout(x.d); err != nil {
				return t, fmt.Errorf("config: timeouts: %s: %s %v", e.Action, x.name, err)
			}
			x.m[e.Action] = x.d
		}
	}
	for _, x := range []struct {
		flags []string
		name  string
		m     map[string]time.Duration
	}{{callFlags, "--call-timeout", t.call}, {handlerFlags, "--handler-timeout", t.handler}} {
		for _, f := range x.flags {
			action, ds, ok := strings.Cut(f, "=")
			if !ok {
				return t, fmt.Errorf("%s %q: want ACTION=DURATION, such as summarize:docs=15m", x.name, f)
			}
			if err := trust.ValidateScope(action); err != nil {
				return t, fmt.Errorf("%s %q: %v", x.name, f, err)
			}
			d, err := time.ParseDuration(ds)
			if err == nil {
				err = checkTimeout(d)
			}
			if err != nil {
				return t, fmt.Errorf("%s %q: %v", x.name, f, err)
			}
			x.m[action] = d
		}
	}
	return t, nil
}

// sendRequest is the JSON body of POST /v1/send.
type sendRequest struct {
	To      string          `json:"to"`
	Action  string          `json:"action"`
	Body    json.RawMessage `json:"body"`
	Timeout string          `json:"timeout"`
	// Stream asks for server-sent events: one "progress" event per
	// progress message of the callee, then "reply" or "error".
	Stream bool `json:"stream"`
	// Token is a PEM token this agent holds, for this call only (instead
	// of the first held one that grants the action).
	Token string `json:"token"`
	// CorrelationID (32 hex digits) continues a conversation.
	CorrelationID string `json:"correlation_id"`
	// Traceparent and Tracestate are W3C trace context, signed in the
	// request.
	Traceparent string `json:"traceparent"`
	Tracestate  string `json:"tracestate"`
}

// sendReply is the JSON answer of POST /v1/send to a call that passed.
type sendReply struct {
	Body          any    `json:"body"`
	CorrelationID string `json:"correlation_id"`
	From          string `json:"from"`
}

// callOptions checks req's per-call choices (token, correlation ID, trace
// context) for a call by the agent self.
func (req *sendRequest) callOptions(self trust.PublicKey) (*node.CallOptions, error) {
	opts := &node.CallOptions{Traceparent: req.Traceparent, Tracestate: req.Tracestate}
	if err := protocol.CheckTraceContext(req.Traceparent, req.Tracestate); err != nil {
		return nil, err
	}
	if req.CorrelationID != "" {
		c, err := protocol.ParseCorrelationID(req.CorrelationID)
		if err != nil {
			return nil, err
		}
		opts.CorrelationID = c
	}
	if req.Token != "" {
		raw, err := trust.DecodePEM([]byte(req.Token), trust.PEMToken)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		t, err := trust.ParseToken(raw, trust.DefaultMaxTokenSize)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		if !t.Holder().Equal(self) {
			return nil, protocol.Reject(trust.CodeNotHolder, "the token is held by %s, not by this agent %s", t.Holder(), self)
		}
		opts.Token = t
	}
	return opts, nil
}

// sendHandler serves POST /v1/send.
func sendHandler(n *node.Node, to timeouts, tr *callTracer) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req sendRequest
		if !readJSON(w, r, 1<<20, &req) {
			return
		}
		peerKey, err := trust.ParsePublicKey(req.To)
		if err != nil {
			writeJSON(w, 400, apiError{Error: "to: " + err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		timeout := to.callTimeout(req.Action)
		if req.Timeout != "" {
			if timeout, err = time.ParseDuration(req.Timeout); err == nil {
				err = checkTimeout(timeout)
			}
			if err != nil {
				writeJSON(w, 400, apiError{Error: "timeout: " + err.Error()})
				return
			}
		}
		// The call ends when the caller's HTTP request does (it went
		// away): the callee's handler learns it (node.ErrCallerCancelled).
		self, _ := trust.PublicKeyFromPeerID(n.ID())
		opts, err := req.callOptions(self)
		if err != nil {
			writeJSON(w, 400, apiError{Error: oneLine(err), Code: string(trust.CodeOf(err))})
			return
		}
		opts.Timeout = timeout
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		var events *sse
		// Each event has handleWriteTimeout to reach the client: one that
		// stops reading does not hold the call (nor the callee's progress
		// writes) for as long as the call may last.
		rc := http.NewResponseController(w)
		emit := func(name string, v any) error {
			_ = rc.SetWriteDeadline(time.Now().Add(handleWriteTimeout))
			return events.event(name, v)
		}
		if req.Stream {
			var ok bool
			if events, ok = newSSE(w); !ok {
				writeJSON(w, 500, apiError{Error: "this connection cannot stream"})
				return
			}
			opts.OnProgress = func(p node.Progress) {
				if emit("progress", map[string]any{"correlation_id": p.CorrelationID.String(), "seq": p.Seq, "body": jsonBody(p.Body)}) != nil {
					cancel() // the client went away
				}
			}
		}
		var rep *node.Reply
		if tr == nil {
			rep, err = n.Call(ctx, peerKey.PeerID(), req.Action, req.Body, opts)
		} else {
			end := tr.startCall(ctx, n.ID().String(), peerKey.PeerID().String(), req.Action, opts)
			rep, err = n.Call(ctx, peerKey.PeerID(), req.Action, req.Body, opts)
			end(rep, err)
		}
		if events != nil {
			if err != nil {
				e := apiError{Error: err.Error(), Code: string(trust.CodeOf(err))}
				if d, busy := protocol.RetryAfter(err); busy {
					e.Code, e.RetryAfterMS = string(protocol.CodeBusy), max(d.Milliseconds(), 1)
				}
				_ = emit("error", e)
				return
			}
			_ = emit("reply", map[string]any{"from": rep.From.String(), "correlation_id": rep.CorrelationID.String(), "body": jsonBody(rep.Body)})
			return
		}
		if d, busy := protocol.RetryAfter(err); busy {
			writeBusy(w, err, d) // shed load, not a refusal: try again then
			return
		}
		if err != nil {
			writeJSON(w, 403, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		var body any = string(rep.Body)
		if json.Valid(rep.Body) {
			body = json.RawMessage(rep.Body)
		}
		// A struct, not a map: the same JSON (keys in this order), encoded
		// without sorting keys or boxing values, on every call.
		writeJSON(w, 200, sendReply{Body: body, CorrelationID: rep.CorrelationID.String(), From: rep.From.String()})
	}
}

// maxCancelNotices bounds the cancel events waiting for one /v1/handle
// process; past it the oldest are dropped (the calls they name are
// answered already: a notice only saves the process work).
const maxCancelNotices = 1024

// cancelNotice tells a /v1/handle process that a call it was handed is
// over before its reply.
type cancelNotice struct {
	ID     string `json:"id"`
	Reason string `json:"reason"` // caller_cancelled or timeout
	Error  string `json:"error"`
}

// over notes that p's handler is ending without its reply (ctx ended): if
// p was handed to its process, the process gets a cancel event.
func (h *hub) over(p *pendingCall, ctx context.Context) {
	n := cancelNotice{Reason: "timeout", Error: "the handler timeout passed"}
	if context.Cause(ctx) == node.ErrCallerCancelled {
		n.Reason, n.Error = "caller_cancelled", "the caller gave up on the call"
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if p.state != callParked || p.q.closed {
		return
	}
	n.ID = p.id
	q := p.q
	if len(q.cancels) >= maxCancelNotices {
		q.cancels = q.cancels[1:]
	}
	q.cancels = append(q.cancels, n)
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// takeCancels returns and clears q's cancel notices.
func (h *hub) takeCancels(q *callQueue) []cancelNotice {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := q.cancels
	q.cancels = nil
	return c
}

// progress sends body as a progress message of the call handed out as id.
func (h *hub) progress(ctx context.Context, id string, body []byte) (found bool, err error) {
	h.mu.Lock()
	p, ok := h.waiting[id]
	h.mu.Unlock()
	if !ok {
		return false, nil
	}
	return true, p.req.Progress(ctx, body)
}

// progressHandler serves POST /v1/progress: {id, body}, a progress message
// of a call handed to a /v1/handle process, sent to the caller signed.
func progressHandler(h *hub) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID   string          `json:"id"`
			Body json.RawMessage `json:"body"`
		}
		if !readJSON(w, r, node.MaxProgressBody+1<<10, &req) {
			return
		}
		if len(req.Body) > node.MaxProgressBody {
			writeJSON(w, 413, apiError{Error: fmt.Sprintf("a progress body is at most %d bytes", node.MaxProgressBody)})
			return
		}
		found, err := h.progress(r.Context(), req.ID, req.Body)
		if !found {
			writeJSON(w, 404, apiError{Error: "no pending request " + req.ID})
			return
		}
		if err != nil {
			writeJSON(w, 409, apiError{Error: err.Error()})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "sent"})
	}
}

// handleEvent is the /v1/handle event of a request handed out as id.
func handleEvent(id string, r *node.Request) map[string]any {
	ev := map[string]any{"id": id, "from": r.From.String(), "action": r.Action,
		"correlation_id": r.CorrelationID.String(), "body": jsonBody(r.Body)}
	if r.Traceparent != "" {
		ev["traceparent"] = r.Traceparent
	}
	if r.Tracestate != "" {
		ev["tracestate"] = r.Tracestate
	}
	return ev
}

// delegateRequest is the JSON body of POST /v1/delegate.
type delegateRequest struct {
	To          string   `json:"to"`
	Scopes      []string `json:"scopes"`
	Delegatable []string `json:"delegatable"`
	TTL         string   `json:"ttl"`   // default 30m, as the CLI's
	Token       string   `json:"token"` // PEM; default: the first held token that can be delegated so
}

// defaultDelegateTTL is the lifetime of a delegated token when the request
// does not say: the CLI's --ttl default.
const defaultDelegateTTL = 30 * time.Minute

// delegateHandler serves POST /v1/delegate: the daemon signs a narrower
// token for another agent with its key, with the refusals of 'meshagent
// token delegate' (trust.Token.Delegate).
func delegateHandler(n *node.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req delegateRequest
		if !readJSON(w, r, 64<<10, &req) {
			return
		}
		to, err := trust.ParsePublicKey(req.To)
		if err != nil {
			writeJSON(w, 400, apiError{Error: "to: " + oneLine(err), Code: string(trust.CodeOf(err))})
			return
		}
		ttl := defaultDelegateTTL
		if req.TTL != "" {
			if ttl, err = time.ParseDuration(req.TTL); err != nil || ttl <= 0 {
				writeJSON(w, 400, apiError{Error: fmt.Sprintf("ttl %q: want a positive Go duration such as 30m", req.TTL)})
				return
			}
		}
		var parent *trust.Token
		if req.Token != "" {
			self, _ := trust.PublicKeyFromPeerID(n.ID())
			opts, err := (&sendRequest{Token: req.Token}).callOptions(self)
			if err != nil {
				writeJSON(w, 400, apiError{Error: oneLine(err), Code: string(trust.CodeOf(err))})
				return
			}
			parent = opts.Token
		}
		nt, err := n.Delegate(parent, to, trust.Grant{Scopes: req.Scopes, Delegatable: req.Delegatable, Expires: time.Now().Add(ttl)})
		if err != nil {
			writeJSON(w, 403, apiError{Error: "refused: " + oneLine(err), Code: string(trust.CodeOf(err))})
			return
		}
		writeJSON(w, 200, map[string]any{"token": string(trust.EncodePEM(nt.Bytes(), trust.PEMToken)), "info": nt.Info()})
	}
}

// delegateViaDaemon is 'meshagent token delegate --daemon': the daemon at
// home signs the delegation; the new token is written to out.
func delegateViaDaemon(ctx context.Context, home, tokenFile, to, scopes, delegatable string, ttl time.Duration, out string) error {
	t, err := loadToken(tokenFile)
	if err != nil {
		return err
	}
	if _, err := parseKeyFlag("to", to); err != nil {
		return err
	}
	c, err := newLocalClient(home)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := c.call(ctx, "POST", "/v1/delegate", delegateRequest{To: to, Scopes: splitList(scopes), Delegatable: splitList(delegatable),
		TTL: ttl.String(), Token: string(trust.EncodePEM(t.Bytes(), trust.PEMToken))}, &buf); err != nil {
		return err
	}
	var ans struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(buf.Bytes(), &ans); err != nil || ans.Token == "" {
		return fmt.Errorf("local API: /v1/delegate answered no token")
	}
	return trust.WriteFileExclusive(out, []byte(ans.Token), 0o600)
}

// sendWithProgress is 'meshagent send --progress': the call as a stream,
// each progress message a JSON line on stderr ({"seq", "body"}), the reply
// on out as without --progress.
func sendWithProgress(ctx context.Context, c *localClient, req map[string]any, out, stderr io.Writer) error {
	rep, e := streamSend(ctx, c, req, func(seq int, body json.RawMessage) {
		b, _ := json.Marshal(map[string]any{"seq": seq, "body": body})
		fmt.Fprintf(stderr, "%s\n", b)
	})
	if e != nil {
		return e.err()
	}
	_, err := fmt.Fprintf(out, "%s\n", rep)
	return err
}
