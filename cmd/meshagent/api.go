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
	"sync"
	"time"

	"github.com/meshagent/meshagent/node"
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

func (s *sse) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
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
type hub struct {
	n       *node.Node
	builtin map[string]bool
	mu      sync.Mutex
	actions map[string]chan *pendingCall
	waiting map[string]*pendingCall
}

type pendingCall struct {
	req   *node.Request
	reply chan callResult
	id    string // set once handed to the local process (under hub.mu)
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
	h := &hub{n: n, builtin: map[string]bool{}, actions: map[string]chan *pendingCall{}, waiting: map[string]*pendingCall{}}
	for _, a := range builtin {
		h.builtin[a] = true
	}
	return h
}

func (h *hub) register(action string) (chan *pendingCall, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.builtin[action] {
		return nil, errHandled{action, true}
	}
	if _, ok := h.actions[action]; ok {
		return nil, errHandled{action, false}
	}
	q := make(chan *pendingCall, 64)
	if err := h.n.Handle(action, func(ctx context.Context, r *node.Request) ([]byte, error) {
		p := &pendingCall{req: r, reply: make(chan callResult, 1)}
		select {
		case q <- p:
		default:
			return nil, fmt.Errorf("the local handler of %s is busy", action)
		}
		select {
		case res := <-p.reply:
			if res.err != "" {
				return nil, fmt.Errorf("%s", res.err)
			}
			return res.body, nil
		case <-ctx.Done():
			h.forget(p)
			return nil, fmt.Errorf("the local handler of %s did not reply in time", action)
		}
	}); err != nil {
		return nil, err
	}
	h.actions[action] = q
	return q, nil
}

// unregister frees action, once the stream that registered q ended, and
// fails the calls still queued for it.
func (h *hub) unregister(action string, q chan *pendingCall) {
	h.mu.Lock()
	if h.actions[action] == q {
		h.n.RemoveHandler(action)
		delete(h.actions, action)
	}
	h.mu.Unlock()
	for {
		select {
		case p := <-q:
			p.reply <- callResult{err: "local handler went away"}
		default:
			return
		}
	}
}

func (h *hub) park(p *pendingCall) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	h.mu.Lock()
	p.id = id
	h.waiting[id] = p
	h.mu.Unlock()
	return id
}

// forget drops a call whose caller stopped waiting, so that waiting holds
// only calls that can still be answered.
func (h *hub) forget(p *pendingCall) {
	h.mu.Lock()
	if p.id != "" && h.waiting[p.id] == p {
		delete(h.waiting, p.id)
	}
	h.mu.Unlock()
}

func (h *hub) resolve(id string, res callResult) bool {
	h.mu.Lock()
	p, ok := h.waiting[id]
	delete(h.waiting, id)
	h.mu.Unlock()
	if ok {
		p.reply <- res
	}
	return ok
}

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

// addStreamingRoutes adds publish, subscribe, handle, reply and tokens.
func addStreamingRoutes(mux *http.ServeMux, n *node.Node, builtin []string) {
	h := newHub(n, builtin)
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
		defer sub.Cancel()
		s, ok := newSSE(w)
		if !ok {
			return
		}
		for {
			m, err := sub.Next(r.Context())
			if err != nil {
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
		q, err := h.register(action)
		var taken errHandled
		if errors.As(err, &taken) {
			writeJSON(w, 409, apiError{Error: err.Error(), Code: "already_handled"})
			return
		}
		if err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		defer h.unregister(action, q)
		s, ok := newSSE(w)
		if !ok {
			return
		}
		keepalive := time.NewTicker(15 * time.Second)
		defer keepalive.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-keepalive.C:
				if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
					return
				}
				s.f.Flush()
			case p := <-q:
				id := h.park(p)
				if s.send(map[string]any{"id": id, "from": p.req.From.String(), "action": p.req.Action,
					"correlation_id": p.req.CorrelationID.String(), "body": jsonBody(p.req.Body)}) != nil {
					h.resolve(id, callResult{err: "local handler went away"})
					return
				}
			}
		}
	})
	mux.HandleFunc("POST /v1/reply", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID    string          `json:"id"`
			Body  json.RawMessage `json:"body"`
			Error string          `json:"error"`
		}
		data, ok := readBody(w, r, 1<<20)
		if !ok {
			return
		}
		if err := json.Unmarshal(data, &req); err != nil {
			writeJSON(w, 400, apiError{Error: "bad JSON: " + err.Error()})
			return
		}
		if !h.resolve(req.ID, callResult{body: req.Body, err: req.Error}) {
			writeJSON(w, 404, apiError{Error: "no pending request " + req.ID})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "sent"})
	})
}
