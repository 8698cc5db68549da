//go:build meshsim

package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it decodes each
// ExportTraceServiceRequest (protobuf) and keeps its spans.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	paths []string
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		data, err := io.ReadAll(req.Body)
		var ex coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(data, &ex)
		}
		if err != nil || req.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("OTLP receiver: %s %s: %v", req.Method, req.Header.Get("Content-Type"), err)
			w.WriteHeader(400)
			return
		}
		r.mu.Lock()
		r.paths = append(r.paths, req.URL.Path)
		for _, rs := range ex.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				r.spans = append(r.spans, ss.Spans...)
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.Close)
	return r
}

// span waits for the span named name of kind whose attribute key is val.
func (r *otlpReceiver) span(t *testing.T, name string, kind tracepb.Span_SpanKind, key, val string) *tracepb.Span {
	t.Helper()
	var found *tracepb.Span
	if err := simulations.WaitFor(15*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, s := range r.spans {
			if s.Name == name && s.Kind == kind && spanAttrs(s)[key] == val {
				found = s
				return nil
			}
		}
		return fmt.Errorf("no %s span %q with %s=%s among %d", kind, name, key, val, len(r.spans))
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

func spanAttrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes {
		m[kv.Key] = kv.Value.GetStringValue()
	}
	return m
}

// TestTracingOTLP: two daemons export to an OTLP/HTTP receiver; a call
// from alice to bob is a client span and a server span in the caller's
// trace, the server's parented on the client's; a refused call's spans
// say why; no span carries a body.
func TestTracingOTLP(t *testing.T) {
	old := tracingBatchTimeout
	tracingBatchTimeout = 100 * time.Millisecond
	t.Cleanup(func() { tracingBatchTimeout = old })
	rcv := newOTLPReceiver(t)
	_, a, _, aID, bID := twoDaemons(t, "ping:agent", "", func(_ string, fc *fileConfig) { fc.OTLPEndpoint = rcv.URL })
	admitted(t, a, bID, 15*time.Second)

	// A call continuing the agent's own trace.
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	var out strings.Builder
	if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "ping:agent", "body": map[string]string{"secret": "body-never-exported"},
		"traceparent": "00-" + traceID + "-" + parentID + "-01"}, &out); err != nil {
		t.Fatalf("send: %v", err)
	}
	client := rcv.span(t, "meshagent.call ping:agent", tracepb.Span_SPAN_KIND_CLIENT, "meshagent.decision", "accept")
	server := rcv.span(t, "meshagent.serve ping:agent", tracepb.Span_SPAN_KIND_SERVER, "meshagent.decision", "accept")
	if got := hex.EncodeToString(client.TraceId); got != traceID {
		t.Errorf("client span trace %s, want the caller's %s", got, traceID)
	}
	if got := hex.EncodeToString(client.ParentSpanId); got != parentID {
		t.Errorf("client span parent %s, want the caller's %s", got, parentID)
	}
	if got := hex.EncodeToString(server.TraceId); got != traceID {
		t.Errorf("server span trace %s, want the caller's %s", got, traceID)
	}
	if hex.EncodeToString(server.ParentSpanId) != hex.EncodeToString(client.SpanId) {
		t.Errorf("server span parent %x, want the client span %x", server.ParentSpanId, client.SpanId)
	}
	ca, sa := spanAttrs(client), spanAttrs(server)
	for _, m := range []map[string]string{ca, sa} {
		if m["meshagent.action"] != "ping:agent" || m["meshagent.sender"] != aID || m["meshagent.recipient"] != bID ||
			len(m["meshagent.correlation_id"]) != 32 {
			t.Errorf("span attributes %v", m)
		}
	}
	if ca["meshagent.correlation_id"] != sa["meshagent.correlation_id"] {
		t.Errorf("correlation IDs differ: client %v, server %v", ca, sa)
	}

	// A call without a token (bob's action that alice holds none for):
	// refused, and its spans say why.
	err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "read:logs"}, io.Discard)
	if err == nil {
		t.Fatal("a call without a token was not refused")
	}
	refused := rcv.span(t, "meshagent.call read:logs", tracepb.Span_SPAN_KIND_CLIENT, "meshagent.decision", "reject")
	ra := spanAttrs(refused)
	if ra["meshagent.reason"] == "" || refused.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("refused call's span: %v, status %v", ra, refused.Status)
	}
	if len(refused.ParentSpanId) != 0 {
		t.Errorf("a call without traceparent has a parent: %x", refused.ParentSpanId)
	}
	srvRefused := rcv.span(t, "meshagent.serve read:logs", tracepb.Span_SPAN_KIND_SERVER, "meshagent.decision", "reject")
	if srvRefused.Status.GetMessage() != ra["meshagent.reason"] || spanAttrs(srvRefused)["meshagent.reason"] != ra["meshagent.reason"] {
		t.Errorf("callee's refusal span %v, %v; caller's reason %s", spanAttrs(srvRefused), srvRefused.Status, ra["meshagent.reason"])
	}
	if hex.EncodeToString(srvRefused.TraceId) != hex.EncodeToString(refused.TraceId) {
		t.Errorf("refusal spans in two traces")
	}
	t.Logf("refused: %s", ra["meshagent.reason"])

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for _, p := range rcv.paths {
		if p != "/v1/traces" {
			t.Errorf("exported to %s", p)
		}
	}
	for _, s := range rcv.spans {
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.String(), "body-never-exported") {
				t.Errorf("span %s exports a body: %v", s.Name, kv)
			}
		}
	}
}

// TestTracingConfig: a bad otlp_endpoint is a one-line error; none means
// no tracer.
func TestTracingConfig(t *testing.T) {
	for _, bad := range []string{"127.0.0.1:4318", "grpc://h:4317", "http://", "http://h:1/?x=1", "http://u:p@h:1", ":bad"} {
		_, err := parseOTLPEndpoint(bad)
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "config: otlp_endpoint: ") {
			t.Errorf("otlp_endpoint %q: %v", bad, err)
		}
	}
	for in, want := range map[string]string{"http://127.0.0.1:4318": "/v1/traces", "https://h/": "/v1/traces", "http://h:1/otlp/v1/traces": "/otlp/v1/traces"} {
		u, err := parseOTLPEndpoint(in)
		if err != nil || u.Path != want {
			t.Errorf("otlp_endpoint %q: %v %v", in, u, err)
		}
	}
	c, err := parseFileConfig([]byte("otlp_endpoint: http://127.0.0.1:4318\n"))
	if err != nil || c.OTLPEndpoint != "http://127.0.0.1:4318" {
		t.Fatalf("config: %+v %v", c, err)
	}
	_, anchor, home, _ := enrolled(t)
	fc := daemonConfig("alice", anchor)
	fc.OTLPEndpoint = "localhost:4318"
	if _, err := planDaemon(home, fc, io.Discard); err == nil || !strings.Contains(err.Error(), "otlp_endpoint") {
		t.Errorf("planDaemon with a bad endpoint: %v", err)
	}
	// Without an endpoint the daemon holds no tracer: its /v1/send runs
	// no OpenTelemetry code.
	var tr *callTracer
	tr.audited(node.AuditRecord{Kind: "request", Direction: "in"})
	tr.shutdown()
}
