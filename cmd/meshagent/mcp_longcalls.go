package main

// Long calls through the MCP bridge (issue 14 section 4): progress
// notifications both ways, and cancellation reaching an `mcp serve` child.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/node"
)

// progressParams is the MCP progress notification for a mesh progress
// message: a JSON object with a number "progress" (and optionally "total"
// and "message") is taken as is; any other body is the message, with seq
// as the progress.
func progressParams(token any, seq int, body []byte) *mcp.ProgressNotificationParams {
	var v struct {
		Progress *float64 `json:"progress"`
		Total    float64  `json:"total"`
		Message  string   `json:"message"`
	}
	if json.Unmarshal(body, &v) == nil && v.Progress != nil {
		return &mcp.ProgressNotificationParams{ProgressToken: token, Progress: *v.Progress, Total: v.Total, Message: v.Message}
	}
	msg := string(body)
	var s string
	if json.Unmarshal(body, &s) == nil {
		msg = s
	}
	return &mcp.ProgressNotificationParams{ProgressToken: token, Progress: float64(seq), Message: msg}
}

// progressBody is the mesh progress body of an MCP progress notification.
func progressBody(p *mcp.ProgressNotificationParams) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"progress": p.Progress, "total": p.Total, "message": p.Message})
	return b
}

// sendStreaming posts in to /v1/send as a stream (stream: true), calls
// onProgress with each progress event, and returns the reply event's data
// (the same JSON as /v1/send's answer) or the refusal.
func (ms *meshMCP) sendStreaming(ctx context.Context, in map[string]any, onProgress func(seq int, body json.RawMessage)) (json.RawMessage, *apiError) {
	return streamSend(ctx, ms.c, in, onProgress)
}

// streamSend posts in to /v1/send of c's daemon as a stream: see
// sendStreaming.
func streamSend(ctx context.Context, c *localClient, in map[string]any, onProgress func(seq int, body json.RawMessage)) (json.RawMessage, *apiError) {
	in["stream"] = true
	data, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://meshagent/v1/send", bytes.NewReader(data))
	if err != nil {
		return nil, &apiError{Code: mcpCodeBadInput, Error: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &apiError{Code: mcpCodeLocalAPI, Error: "local API (is 'meshagent run' running?): " + oneLine(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		e := readAPIError(resp)
		return nil, &e
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, maxAnswer+int64(node.MaxProgressPerCall)*(node.MaxProgressBody+1<<10)))
	sc.Buffer(make([]byte, 64<<10), int(maxAnswer)+1<<10)
	name := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			d := json.RawMessage(strings.TrimPrefix(line, "data: "))
			switch name {
			case "progress":
				var p struct {
					Seq  int             `json:"seq"`
					Body json.RawMessage `json:"body"`
				}
				if json.Unmarshal(d, &p) == nil {
					onProgress(p.Seq, p.Body)
				}
			case "reply":
				return d, nil
			case "error":
				var e apiError
				if json.Unmarshal(d, &e) != nil || e.Error == "" {
					e = apiError{Code: mcpCodeLocalAPI, Error: string(d)}
				}
				return nil, &e
			}
		case line == "":
			name = ""
		}
	}
	return nil, &apiError{Code: mcpCodeLocalAPI, Error: fmt.Sprintf("local API: the call's stream ended without a reply (%v)", sc.Err())}
}

// sendCall posts a mesh_call to /v1/send: streamed, with each progress
// message as an MCP progress notification, when the MCP request carried a
// progress token; plain otherwise.
func (ms *meshMCP) sendCall(ctx context.Context, req *mcp.CallToolRequest, in map[string]any) (json.RawMessage, *apiError) {
	token := req.Params.GetProgressToken()
	if token == nil || req.Session == nil {
		return ms.send(ctx, in)
	}
	return ms.sendStreaming(ctx, in, func(seq int, body json.RawMessage) {
		_ = req.Session.NotifyProgress(ctx, progressParams(token, seq, body))
	})
}

// childCalls are the calls in flight to an `mcp serve` child, by the id
// the daemon handed them out under (their progress token).
type childCalls struct {
	mu    sync.Mutex
	calls map[string]*childCall
}

type childCall struct {
	cancel context.CancelFunc
	seen   int       // progress notifications forwarded or being forwarded
	active int       // being forwarded
	last   time.Time // the end of the last forward
}

// Progress notifications the SDK hands over on their own goroutine, not
// ordered with the result: a call that had any waits, before its reply,
// until none was forwarded for progressQuiet, at most progressDrain.
const (
	progressQuiet = 25 * time.Millisecond
	progressDrain = 250 * time.Millisecond
)

func (cc *childCalls) add(id string, cancel context.CancelFunc) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.calls == nil {
		cc.calls = map[string]*childCall{}
	}
	cc.calls[id] = &childCall{cancel: cancel}
}

// done ends the call id, once the child answered: progress it sent before
// its result is forwarded first.
func (cc *childCalls) done(id string) {
	deadline := time.Now().Add(progressDrain)
	for {
		cc.mu.Lock()
		c := cc.calls[id]
		if c == nil || c.seen == 0 || (c.active == 0 && time.Since(c.last) >= progressQuiet) || time.Now().After(deadline) {
			delete(cc.calls, id)
			cc.mu.Unlock()
			return
		}
		cc.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

// stop cancels the call id: the SDK then sends the child
// notifications/cancelled.
func (cc *childCalls) stop(id string) {
	cc.mu.Lock()
	c := cc.calls[id]
	cc.mu.Unlock()
	if c != nil {
		c.cancel()
	}
}

// begin notes a progress notification of call id being forwarded; false
// when id is no call in flight.
func (cc *childCalls) begin(id string) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	c := cc.calls[id]
	if c == nil {
		return false
	}
	c.seen++
	c.active++
	return true
}

func (cc *childCalls) end(id string) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if c := cc.calls[id]; c != nil {
		c.active--
		c.last = time.Now()
	}
}

// forwardProgress is the child's progress notification handler: a
// notification for a call in flight goes to its caller through
// /v1/progress (the daemon signs it); any other is dropped. The daemon's
// bounds (node.MaxProgressPerCall, node.MaxProgressBody) hold: past them
// it refuses, and the notification is dropped.
func forwardProgress(c *localClient, calls *childCalls) func(context.Context, *mcp.ProgressNotificationClientRequest) {
	return func(ctx context.Context, req *mcp.ProgressNotificationClientRequest) {
		id, ok := req.Params.ProgressToken.(string)
		if !ok || !calls.begin(id) {
			return
		}
		defer calls.end(id)
		_ = c.call(ctx, "POST", "/v1/progress", map[string]any{"id": id, "body": progressBody(req.Params)}, io.Discard)
	}
}

// mcpMaxTimeout is the longest a mesh_call may wait.
const mcpMaxTimeout = node.MaxTimeout

// traceFromMeta copies the W3C trace context of an MCP request's _meta
// (traceparent, tracestate) into a /v1/send request, which checks it.
func traceFromMeta(meta map[string]any, in map[string]any) {
	for _, k := range []string{"traceparent", "tracestate"} {
		if v, ok := meta[k].(string); ok && v != "" {
			in[k] = v
		}
	}
}
