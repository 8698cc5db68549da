package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Tracing: with otlp_endpoint set, the daemon exports one span per call
// over OTLP/HTTP (protobuf): a client span for each /v1/send and a server
// span for each request this agent's node decided on. Without it the
// daemon holds no tracer (a nil *callTracer) and no OpenTelemetry code
// runs on any path.
//
// A client span is parented on the traceparent /v1/send was given, when
// there is one, and its own context is what the envelope carries, signed:
// so the callee's server span continues the caller's trace, one level
// down. Spans carry the action, both peer IDs, the decision, the reason
// code and the correlation ID, never a body, a key or a token (nor a
// refusal's free-text detail).

// Span attributes.
const (
	attrAction      = "meshagent.action"
	attrSender      = "meshagent.sender"    // peer ID of the caller
	attrRecipient   = "meshagent.recipient" // peer ID of the callee
	attrDecision    = "meshagent.decision"  // accept or reject
	attrReason      = "meshagent.reason"    // a stable reason code, on a refusal
	attrCorrelation = "meshagent.correlation_id"
)

// tracingBatchTimeout is how long finished spans wait to be exported in
// one batch (tests shorten it).
var tracingBatchTimeout = 2 * time.Second

// parseOTLPEndpoint checks otlp_endpoint: an http or https URL with a
// host. An endpoint with no path (or "/") gets OTLP's /v1/traces, as
// OTEL_EXPORTER_OTLP_ENDPOINT does; a path given is used as is.
func parseOTLPEndpoint(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("config: otlp_endpoint: %q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("config: otlp_endpoint: %q: want http://HOST:PORT or https://HOST:PORT (OTLP/HTTP)", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("config: otlp_endpoint: %q: want a scheme, a host and at most a path", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return u, nil
}

// callTracer makes the daemon's spans. Its methods are safe for
// concurrent use; a nil *callTracer does nothing.
type callTracer struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TraceContext
	// open holds the client spans of calls under way, by span ID, so that
	// the node's audit record of the call (which has the correlation ID
	// the node chose) reaches its span.
	open sync.Map // [8]byte -> trace.Span
}

// newCallTracer returns the tracer exporting to endpoint (already checked
// by parseOTLPEndpoint) for the agent self (peer ID) named name.
func newCallTracer(endpoint *url.URL, self, name string) (*callTracer, error) {
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(endpoint.Host), otlptracehttp.WithURLPath(endpoint.Path)}
	if endpoint.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("config: otlp_endpoint: %v", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", "meshagent"),
		attribute.String("service.instance.id", self), attribute.String("meshagent.agent", name))
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res),
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(tracingBatchTimeout)))
	return &callTracer{tp: tp, tracer: tp.Tracer("github.com/meshagent/meshagent/cmd/meshagent")}, nil
}

// shutdown exports what is left, waiting at most 5 s.
func (t *callTracer) shutdown() {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = t.tp.Shutdown(ctx)
}

// remote is the context of a W3C traceparent (and tracestate), or ctx
// when there is none.
func (t *callTracer) remote(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return t.prop.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent, "tracestate": tracestate})
}

// startCall starts the client span of a call of action by self to peer to,
// parented on opts' trace context when it has one, and puts the span's
// own context in opts, to travel in the envelope. The function it returns
// ends the span with the call's outcome (err nil: accepted).
func (t *callTracer) startCall(ctx context.Context, self, to, action string, opts *node.CallOptions) func(*node.Reply, error) {
	if t == nil {
		return func(*node.Reply, error) {}
	}
	ctx = t.remote(ctx, opts.Traceparent, opts.Tracestate)
	_, span := t.tracer.Start(ctx, "meshagent.call "+action, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String(attrAction, action), attribute.String(attrSender, self), attribute.String(attrRecipient, to)))
	if opts.CorrelationID != (protocol.CorrelationID{}) {
		span.SetAttributes(attribute.String(attrCorrelation, opts.CorrelationID.String()))
	}
	sc := span.SpanContext()
	opts.Traceparent = traceparentOf(sc)
	opts.Tracestate = sc.TraceState().String()
	id := [8]byte(sc.SpanID())
	t.open.Store(id, span)
	return func(rep *node.Reply, err error) {
		t.open.Delete(id)
		if rep != nil {
			span.SetAttributes(attribute.String(attrCorrelation, rep.CorrelationID.String()))
		}
		outcome(span, err)
		span.End()
	}
}

// outcome sets the decision (and the reason code of a refusal) on span.
func outcome(span trace.Span, err error) {
	if err == nil {
		span.SetAttributes(attribute.String(attrDecision, "accept"))
		return
	}
	code := reasonOf(err)
	span.SetAttributes(attribute.String(attrDecision, "reject"), attribute.String(attrReason, code))
	span.SetStatus(codes.Error, code)
}

// audited sees each audit record of the node (the daemon's audit hook).
// An inbound request becomes a server span, from the node's decision to
// its reply; an outbound one gives its client span the correlation ID.
func (t *callTracer) audited(r node.AuditRecord) {
	if t == nil || r.Kind != "request" {
		return
	}
	switch r.Direction {
	case "out":
		if r.CorrelationID == "" {
			return
		}
		if sc := t.spanContext(r.Traceparent); sc.IsValid() {
			if s, ok := t.open.Load([8]byte(sc.SpanID())); ok {
				s.(trace.Span).SetAttributes(attribute.String(attrCorrelation, r.CorrelationID))
			}
		}
	case "in":
		t.served(r)
	}
}

func (t *callTracer) spanContext(traceparent string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(t.remote(context.Background(), traceparent, ""))
}

// served exports the server span of an inbound request.
func (t *callTracer) served(r node.AuditRecord) {
	ctx := t.remote(context.Background(), r.Traceparent, r.Tracestate)
	name := "meshagent.serve"
	if r.Action != "" {
		name += " " + r.Action
	}
	attrs := []attribute.KeyValue{attribute.String(attrAction, r.Action), attribute.String(attrSender, r.Sender),
		attribute.String(attrRecipient, r.Recipient), attribute.String(attrDecision, string(r.Decision))}
	if r.CorrelationID != "" {
		attrs = append(attrs, attribute.String(attrCorrelation, r.CorrelationID))
	}
	if r.Reason != "" {
		attrs = append(attrs, attribute.String(attrReason, r.Reason))
	}
	_, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(r.Time), trace.WithAttributes(attrs...))
	if r.Decision == "reject" {
		span.SetStatus(codes.Error, r.Reason)
	}
	span.End(trace.WithTimestamp(r.Time.Add(time.Duration(r.LatencyMS * float64(time.Millisecond)))))
}

// traceparentOf is sc as a W3C traceparent (version 00).
func traceparentOf(sc trace.SpanContext) string {
	tid, sid := sc.TraceID(), sc.SpanID()
	return "00-" + hex.EncodeToString(tid[:]) + "-" + hex.EncodeToString(sid[:]) + "-" + sc.TraceFlags().String()
}

// reasonOf is the stable reason code of a call's error, busy included.
func reasonOf(err error) string {
	if _, busy := protocol.RetryAfter(err); busy {
		return string(protocol.CodeBusy)
	}
	if c := trust.CodeOf(err); c != "" {
		return string(c)
	}
	return "error"
}
