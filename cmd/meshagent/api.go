package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// jsonBody returns b as JSON when it is valid JSON, else as a JSON string.
func jsonBody(b []byte) any {
	if len(b) > 0 && json.Valid(b) {
		return json.RawMessage(b)
	}
	return string(b)
}

// sse writes server-sent events.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func newSSE(w http.ResponseWriter) (*sse, bool) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, false
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	f.Flush()
	return &sse{w, f}, true
}

func (s *sse) send(v any) error { return s.event("", v) }

// event writes one event of type name ("" for the default, message).
func (s *sse) event(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if name != "" {
		if _, err := fmt.Fprintf(s.w, "event: %s\n", name); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(s.w, "data: %s\n\n", b); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

// hub hands inbound requests for an action to the one local process that
// streams them from /v1/handle, and waits for its reply on /v1/reply.
//
// An action has at most one handler: while a process streams an action's
// requests, another /v1/handle for that action is refused (409), so that no
// holder of the socket can take over what another process serves. The
// action is free again as soon as the first one's stream ends (it
// disconnected, or the daemon could not write to it). The daemon's built-in
// actions are never free.
//
// The hub holds a call (queued for the process, or handed to it and
// waiting for its reply) only while the node's handler for it runs: when
// the handler returns (replied, or the handler timeout passed) the call is
// released wherever it is, so a process that never replies, or never reads
// its stream, makes the daemon keep nothing past the handler timeout.
// Calls held are bounded per action and in all (maxPendingPerAction and
// friends): past a bound, calls are refused at once as busy, with
// hubBusyRetry as their retry-after (protocol.Busy).
type hub struct {
	n       *node.Node
	builtin map[string]bool
	mu      sync.Mutex
	actions map[string]*callQueue
	waiting map[string]*pendingCall // handed to a process, by id
	calls   int                     // held, in all actions
	bytes   int
	to      timeouts
}

// Bounds on the calls the hub holds for local processes, below the
// node's own (node.Config.MaxConcurrentCalls, 512 handler runs at once),
// each at most 256 KiB.
const (
	maxPendingPerAction      = 64       // calls held for one action
	maxPendingBytesPerAction = 16 << 20 // their request bytes
	maxPendingCalls          = 256      // calls held in all
	maxPendingBytes          = 64 << 20 // their request bytes
	pendingCallOverhead      = 512      // charged per call besides its body and action
	// hubBusyRetry is the retry-after of a call refused past a bound: the
	// process is 64 calls behind, and each it answers frees one.
	hubBusyRetry = time.Second
)

// callQueue holds the calls of one action's process.
type callQueue struct {
	action string
	ready  chan struct{} // signalled when queued grows
	queued []*pendingCall
	calls  int // queued or handed to the process
	bytes  int
	closed bool // its stream ended
	// notAdvertised says why the action is served but not advertised
	// (past discovery.MaxActions or MaxAdvertSize), or is empty.
	notAdvertised string
	// cancels are the calls handed to the process that ended before
	// their reply (longcalls.go), waiting to be told.
	cancels []cancelNotice
}

type callState int

const (
	callQueued   callState = iota // in q.queued
	callParked                    // handed to the process, in hub.waiting
	callAnswered                  // replied to (or failed), not yet released
	callReleased                  // its handler returned: the hub holds nothing of it
)

type pendingCall struct {
	req   *node.Request
	size  int
	q     *callQueue
	reply chan callResult // buffered: sent at most once (under hub.mu)
	id    string          // set when parked
	state callState       // under hub.mu
}

type callResult struct {
	body []byte
	err  string
}

// errHandled is the refusal of a second handler for an action.
type errHandled struct {
	action  string
	builtin bool
}

func (e errHandled) Error() string {
	if e.builtin {
		return fmt.Sprintf("%s is served by the daemon itself and cannot be handled by a local process", e.action)
	}
	return fmt.Sprintf("%s is already handled by another local process (one handler per action, until its stream ends)", e.action)
}

func newHub(n *node.Node, builtin []string) *hub {
	h := &hub{n: n, builtin: map[string]bool{}, actions: map[string]*callQueue{}, waiting: map[string]*pendingCall{}}
	for _, a := range builtin {
		h.builtin[a] = true
	}
	return h
}

func (h *hub) register(ad node.Action, timeout time.Duration) (*callQueue, error) {
	action := ad.Scope
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.builtin[action] {
		return nil, errHandled{action, true}
	}
	if _, ok := h.actions[action]; ok {
		return nil, errHandled{action, false}
	}
	q := &callQueue{action: action, ready: make(chan struct{}, 1)}
	if timeout == 0 {
		timeout = h.to.handlerTimeout(action)
	}
	if err := h.n.HandleWith(action, func(ctx context.Context, r *node.Request) ([]byte, error) {
		p, err := h.enqueue(q, r)
		if err != nil {
			return nil, err
		}
		defer h.release(p)
		select {
		case res := <-p.reply:
			if res.err != "" {
				return nil, fmt.Errorf("%s", res.err)
			}
			return res.body, nil
		case <-ctx.Done():
			h.over(p, ctx)
			if context.Cause(ctx) == node.ErrCallerCancelled {
				return nil, node.ErrCallerCancelled
			}
			return nil, fmt.Errorf("the local handler of %s did not reply in time", action)
		}
	}, node.HandlerOptions{Timeout: timeout}); err != nil {
		return nil, err
	}
	if err := h.n.Advertise(ad); trust.CodeOf(err) == trust.CodeTooLarge {
		q.notAdvertised = oneLine(err) // the agent advertises what it can; this one is still served
	} else if err != nil {
		h.n.Handle(action, nil)
		return nil, err
	}
	h.actions[action] = q
	return q, nil
}

// unregister frees q's action, once the stream that registered q ended,
// and fails the calls still queued for it.
func (h *hub) unregister(q *callQueue) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.actions[q.action] == q {
		h.n.Handle(q.action, nil)
		_ = h.n.Unadvertise(q.action)
		delete(h.actions, q.action)
	}
	q.closed = true
	for _, p := range q.queued {
		p.state = callAnswered
		p.reply <- callResult{err: "local handler went away"}
	}
	q.queued = nil
}

// enqueue queues r for q's process, or refuses it when q is closed or a
// bound is reached.
func (h *hub) enqueue(q *callQueue, r *node.Request) (*pendingCall, error) {
	size := len(r.Body) + len(r.Action) + pendingCallOverhead
	h.mu.Lock()
	defer h.mu.Unlock()
	if q.closed {
		return nil, fmt.Errorf("the local handler of %s went away", q.action)
	}
	if q.calls >= maxPendingPerAction || q.bytes+size > maxPendingBytesPerAction ||
		h.calls >= maxPendingCalls || h.bytes+size > maxPendingBytes {
		return nil, protocol.Busy(hubBusyRetry, "the local handler of %s is busy: %d calls held for it, %d for all local handlers", q.action, q.calls, h.calls)
	}
	p := &pendingCall{req: r, size: size, q: q, reply: make(chan callResult, 1)}
	q.queued = append(q.queued, p)
	q.calls, q.bytes = q.calls+1, q.bytes+size
	h.calls, h.bytes = h.calls+1, h.bytes+size
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return p, nil
}

// next hands the oldest call queued in q to its process: it waits under
// a fresh id for the reply. It returns nil when none is queued.
func (h *hub) next(q *callQueue) (*pendingCall, string) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(q.queued) == 0 {
		return nil, ""
	}
	p := q.queued[0]
	q.queued[0] = nil
	q.queued = q.queued[1:]
	p.id, p.state = id, callParked
	h.waiting[id] = p
	return p, id
}

// release drops p, whose handler returned, from wherever it is.
func (h *hub) release(p *pendingCall) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch p.state {
	case callReleased:
		return
	case callQueued:
		if i := slices.Index(p.q.queued, p); i >= 0 {
			p.q.queued = slices.Delete(p.q.queued, i, i+1)
		}
	case callParked:
		delete(h.waiting, p.id)
	}
	p.state = callReleased
	p.q.calls, p.q.bytes = p.q.calls-1, p.q.bytes-p.size
	h.calls, h.bytes = h.calls-1, h.bytes-p.size
}

// resolve answers the call handed out as id, if its caller still waits.
func (h *hub) resolve(id string, res callResult) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.waiting[id]
	if !ok {
		return false
	}
	delete(h.waiting, id)
	p.state = callAnswered
	p.reply <- res
	return true
}

// held returns the calls the hub holds, queued or handed out, and their
// request bytes, counted from where they are (for /metrics).
func (h *hub) held() (calls, bytes int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.waiting {
		calls, bytes = calls+1, bytes+p.size
	}
	for _, q := range h.actions {
		for _, p := range q.queued {
			calls, bytes = calls+1, bytes+p.size
		}
	}
	return calls, bytes
}

// A /v1/subscribe stream's messages wait for its process in a queue of at
// most maxSubscriberBytes: a process that falls further behind is dropped
// (its queue freed at once, its subscription cancelled) and gets one last
// event saying so, within fellBehindGrace, before its stream ends.
const (
	maxSubscriberBytes  = 8 << 20
	subscriberOverhead  = 256 // charged per message besides its body, topic and action
	fellBehindGrace     = 10 * time.Second
	fellBehindCode      = "fell_behind"
	fellBehindEventName = "error"
)

// subscribers counts, for /metrics, what the subscribe streams hold.
type subscribers struct {
	bytes   atomic.Int64 // queued in all streams
	dropped atomic.Int64 // streams dropped for falling behind
}

// subQueue is one stream's queue, filled by follow and emptied by take.
type subQueue struct {
	mu     sync.Mutex
	msgs   []*node.Message
	bytes  int
	behind bool // went over the bound: the stream ends
	done   bool // the subscription ended
	ready  chan struct{}
	all    *subscribers
}

func msgSize(m *node.Message) int {
	return len(m.Body) + len(m.Topic) + len(m.Action) + subscriberOverhead
}

// follow reads sub into q until ctx ends or q goes over its bound, then
// cancels sub. onBehind is called once q went over.
func (q *subQueue) follow(ctx context.Context, sub *node.Subscription, onBehind func()) {
	defer sub.Cancel()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			q.finish(false)
			return
		}
		if !q.push(m) {
			onBehind()
			return
		}
	}
}

// push queues m, or, past the bound, drops all and reports false.
func (q *subQueue) push(m *node.Message) bool {
	size := msgSize(m)
	q.mu.Lock()
	if q.bytes+size > maxSubscriberBytes {
		q.mu.Unlock()
		q.finish(true)
		return false
	}
	q.msgs = append(q.msgs, m)
	q.bytes += size
	q.all.bytes.Add(int64(size))
	q.mu.Unlock()
	q.signal()
	return true
}

// finish ends q: nothing more is queued; behind drops what is.
func (q *subQueue) finish(behind bool) {
	q.mu.Lock()
	q.done = true
	if behind {
		q.behind = true
		q.all.bytes.Add(-int64(q.bytes))
		q.msgs, q.bytes = nil, 0
	}
	q.mu.Unlock()
	q.signal()
}

func (q *subQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take waits for the next message. It returns nil when the stream is to
// end, with behind set when it fell behind.
func (q *subQueue) take(ctx context.Context) (m *node.Message, behind bool) {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			m = q.msgs[0]
			q.msgs[0] = nil
			q.msgs = q.msgs[1:]
			size := msgSize(m)
			q.bytes -= size
			q.all.bytes.Add(-int64(size))
			q.mu.Unlock()
			return m, false
		}
		done, behind := q.done, q.behind
		q.mu.Unlock()
		if done {
			return nil, behind
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, false
		}
	}
}

// drop frees what q still holds once its stream ended.
func (q *subQueue) drop() {
	q.mu.Lock()
	q.all.bytes.Add(-int64(q.bytes))
	q.msgs, q.bytes = nil, 0
	q.mu.Unlock()
}

// handleWriteTimeout bounds each write to a /v1/handle stream, an event or
// a keepalive: a process that takes nothing for that long is dropped (its
// stream ends, its action is free again). It is the node's default handler
// timeout: by then the call being written has failed anyway. A variable so
// that tests can shorten it.
var handleWriteTimeout = 10 * time.Second

// streamRequest refuses a long-lived GET (subscribe, handle) that has a
// body: the server lifts its read deadline and notices the client going
// away (ending the stream and freeing its action) only once the request is
// read to its end, and a stream never reads a body.
func streamRequest(w http.ResponseWriter, r *http.Request) bool {
	if r.ContentLength != 0 {
		writeJSON(w, 400, apiError{Error: "a stream request has no body"})
		return false
	}
	return true
}

// addStreamingRoutes adds publish, subscribe, handle, reply and tokens,
// and the gauges of what their streams hold to met.
func addStreamingRoutes(mux *http.ServeMux, n *node.Node, met *daemonMetrics, to timeouts, builtin []string) {
	h := newHub(n, builtin)
	h.to = to
	subs := &subscribers{}
	met.watchStreams(h, subs)
	mux.HandleFunc("GET /v1/tokens", func(w http.ResponseWriter, r *http.Request) {
		out := []trust.TokenInfo{}
		for _, t := range n.Tokens() {
			out = append(out, t.Info())
		}
		writeJSON(w, 200, out)
	})
	mux.HandleFunc("POST /v1/publish", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Topic  string          `json:"topic"`
			Action string          `json:"action"`
			Body   json.RawMessage `json:"body"`
		}
		data, ok := readBody(w, r, 1<<20)
		if !ok {
			return
		}
		if err := json.Unmarshal(data, &req); err != nil || req.Topic == "" {
			writeJSON(w, 400, apiError{Error: "want JSON {topic, action, body}"})
			return
		}
		if err := trust.ValidateScope(req.Action); err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		if err := n.Publish(r.Context(), req.Topic, req.Action, req.Body); err != nil {
			writeJSON(w, 403, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		writeJSON(w, 200, map[string]string{"topic": req.Topic, "status": "published"})
	})
	mux.HandleFunc("GET /v1/subscribe", func(w http.ResponseWriter, r *http.Request) {
		if !streamRequest(w, r) {
			return
		}
		topic := r.URL.Query().Get("topic")
		if topic == "" {
			writeJSON(w, 400, apiError{Error: "topic is required"})
			return
		}
		sub, err := n.Subscribe(topic)
		if err != nil {
			writeJSON(w, 500, apiError{Error: err.Error()})
			return
		}
		s, ok := newSSE(w)
		if !ok {
			sub.Cancel()
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		q := &subQueue{ready: make(chan struct{}, 1), all: subs}
		rc := http.NewResponseController(w)
		followed := make(chan struct{})
		go func() {
			defer close(followed)
			q.follow(ctx, sub, func() {
				subs.dropped.Add(1)
				// A write blocked on a stalled process gives up too.
				_ = rc.SetWriteDeadline(time.Now().Add(fellBehindGrace))
			})
		}()
		defer func() { cancel(); <-followed; q.drop() }()
		for {
			m, behind := q.take(ctx)
			if m == nil {
				if behind {
					_ = s.event(fellBehindEventName, apiError{Code: fellBehindCode, Error: fmt.Sprintf(
						"this subscriber fell behind: over %d MiB of messages waited for it; they were dropped and the stream ends (subscribe again)",
						maxSubscriberBytes>>20)})
				}
				return
			}
			if s.send(map[string]any{"topic": m.Topic, "from": m.From.String(), "action": m.Action,
				"correlation_id": m.CorrelationID.String(), "body": jsonBody(m.Body)}) != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /v1/handle", func(w http.ResponseWriter, r *http.Request) {
		if !streamRequest(w, r) {
			return
		}
		action := r.URL.Query().Get("action")
		if err := trust.ValidateScope(action); err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		ad, err := handlerAdvert(r.URL.Query(), action)
		if err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		var timeout time.Duration
		if ts := r.URL.Query().Get("timeout"); ts != "" {
			if timeout, err = time.ParseDuration(ts); err == nil {
				err = checkTimeout(timeout)
			}
			if err != nil {
				writeJSON(w, 400, apiError{Error: "timeout: " + err.Error()})
				return
			}
		}
		q, err := h.register(ad, timeout)
		var taken errHandled
		if errors.As(err, &taken) {
			writeJSON(w, 409, apiError{Error: err.Error(), Code: "already_handled"})
			return
		}
		if err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		defer h.unregister(q)
		if q.notAdvertised != "" {
			w.Header().Set("Meshagent-Not-Advertised", q.notAdvertised)
		}
		s, ok := newSSE(w)
		if !ok {
			return
		}
		// Every write has handleWriteTimeout to reach the process: one
		// that stopped reading is dropped and its action freed. (s's own
		// Flush does not report a write that failed; rc.Flush does.)
		rc := http.NewResponseController(w)
		keepalive := time.NewTicker(15 * time.Second)
		defer keepalive.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-keepalive.C:
				_ = rc.SetWriteDeadline(time.Now().Add(handleWriteTimeout))
				if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
					return
				}
			case <-q.ready:
				for {
					p, id := h.next(q)
					if p == nil {
						break
					}
					_ = rc.SetWriteDeadline(time.Now().Add(handleWriteTimeout))
					if s.send(handleEvent(id, p.req)) != nil || rc.Flush() != nil {
						h.resolve(id, callResult{err: "local handler went away"})
						return
					}
				}
				for _, c := range h.takeCancels(q) {
					_ = rc.SetWriteDeadline(time.Now().Add(handleWriteTimeout))
					if s.event("cancel", c) != nil || rc.Flush() != nil {
						return
					}
				}
			}
		}
	})
	mux.HandleFunc("POST /v1/progress", progressHandler(h)) // longcalls.go
	mux.HandleFunc("POST /v1/reply", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID    string          `json:"id"`
			Body  json.RawMessage `json:"body"`
			Error string          `json:"error"`
		}
		if !readJSON(w, r, 1<<20, &req) {
			return
		}
		if !h.resolve(req.ID, callResult{body: req.Body, err: req.Error}) {
			writeJSON(w, 404, apiError{Error: "no pending request " + req.ID})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "sent"})
	})
}
