package main

// Long calls over the local API (issue 14 section 4): per-action call and
// handler timeouts from the config and flags, /v1/send with a timeout and
// a stream of progress events, progress and cancellation for /v1/handle
// processes.

import (
	"context"
	"encoding/json"
	"fmt"
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
}

// sendHandler serves POST /v1/send.
func sendHandler(n *node.Node, to timeouts) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req sendRequest
		data, ok := readBody(w, r, 1<<20)
		if !ok {
			return
		}
		if err := json.Unmarshal(data, &req); err != nil {
			writeJSON(w, 400, apiError{Error: "bad JSON: " + err.Error()})
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
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		opts := &node.CallOptions{Timeout: timeout}
		var events *sse
		if req.Stream {
			if events, ok = newSSE(w); !ok {
				writeJSON(w, 500, apiError{Error: "this connection cannot stream"})
				return
			}
			opts.OnProgress = func(p node.Progress) {
				if events.event("progress", map[string]any{"correlation_id": p.CorrelationID.String(), "seq": p.Seq, "body": jsonBody(p.Body)}) != nil {
					cancel() // the client went away
				}
			}
		}
		rep, err := n.Call(ctx, peerKey.PeerID(), req.Action, req.Body, opts)
		if events != nil {
			if err != nil {
				e := apiError{Error: err.Error(), Code: string(trust.CodeOf(err))}
				if d, busy := protocol.RetryAfter(err); busy {
					e.Code, e.RetryAfterMS = string(protocol.CodeBusy), max(d.Milliseconds(), 1)
				}
				_ = events.event("error", e)
				return
			}
			_ = events.event("reply", map[string]any{"from": rep.From.String(), "correlation_id": rep.CorrelationID.String(), "body": jsonBody(rep.Body)})
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
		writeJSON(w, 200, map[string]any{"from": rep.From.String(), "correlation_id": rep.CorrelationID.String(), "body": body})
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
		data, ok := readBody(w, r, node.MaxProgressBody+1<<10)
		if !ok {
			return
		}
		if err := json.Unmarshal(data, &req); err != nil {
			writeJSON(w, 400, apiError{Error: "bad JSON: " + err.Error()})
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
