//go:build meshsim

package node_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// longMesh is orchestrator, worker and mallory, with short default
// timeouts (500 ms) and the orchestrator granted read:slow and read:logs.
func longMesh(t *testing.T, transport string, configure func(string, *node.Config)) *simulations.Mesh {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"orchestrator", "worker", "mallory"}, simulations.Options{Transport: transport,
		Configure: func(name string, c *node.Config) {
			c.CallTimeout, c.HandlerTimeout = 500*time.Millisecond, 500*time.Millisecond
			if configure != nil {
				configure(name, c)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Grant("orchestrator", []string{"read:slow", "read:logs"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	return m
}

func callWith(m *simulations.Mesh, ctx context.Context, action string, opts *node.CallOptions) (*node.Reply, error) {
	return m.Agents["orchestrator"].Node.Call(ctx, m.Agents["worker"].ID(), action, []byte("x"), opts)
}

// A handler with its own timeout runs past the node's default, and a
// call with its own timeout waits for it; without either, the short
// defaults hold.
func TestPerActionAndPerCallTimeouts(t *testing.T) {
	m := longMesh(t, "tcp", nil)
	worker := m.Agents["worker"].Node
	slow := func(ctx context.Context, _ *node.Request) ([]byte, error) {
		select {
		case <-time.After(1500 * time.Millisecond):
			return []byte("done"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := worker.HandleWith("read:slow", slow, node.HandlerOptions{Timeout: 20 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	_ = worker.Handle("read:logs", slow)
	if err := worker.HandleWith("read:x", slow, node.HandlerOptions{Timeout: 2 * time.Hour}); err == nil {
		t.Fatal("a handler timeout over node.MaxTimeout was taken")
	}
	ctx := context.Background()
	if rep, err := callWith(m, ctx, "read:slow", &node.CallOptions{Timeout: 15 * time.Minute}); err != nil || string(rep.Body) != "done" {
		t.Fatalf("a 1.5 s call with a 15 min timeout to a 20 min handler: %v", err)
	}
	start := time.Now()
	if _, err := callWith(m, ctx, "read:slow", nil); trust.CodeOf(err) != protocol.CodeUnavailable || time.Since(start) > time.Second {
		t.Fatalf("a call with the default 500 ms timeout: %v after %s", err, time.Since(start))
	}
	_, err := callWith(m, ctx, "read:logs", &node.CallOptions{Timeout: 5 * time.Second})
	if trust.CodeOf(err) != protocol.CodeHandlerError {
		t.Fatalf("a handler with the default 500 ms timeout: %v", err)
	}
	if _, err := callWith(m, ctx, "read:slow", &node.CallOptions{Timeout: 2 * time.Hour}); err == nil {
		t.Fatal("a call timeout over node.MaxTimeout was taken")
	}
}

// When the caller cancels, or its deadline passes, the handler's context
// ends with ErrCallerCancelled, over TCP and QUIC.
func TestCallerCancellationReachesHandler(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			m := longMesh(t, transport, nil)
			started, causes := make(chan struct{}, 2), make(chan error, 2)
			_ = m.Agents["worker"].Node.HandleWith("read:slow", func(ctx context.Context, _ *node.Request) ([]byte, error) {
				started <- struct{}{}
				select {
				case <-ctx.Done():
					causes <- context.Cause(ctx)
				case <-time.After(time.Minute):
					causes <- errors.New("never cancelled")
				}
				return nil, ctx.Err()
			}, node.HandlerOptions{Timeout: 15 * time.Minute})

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := callWith(m, ctx, "read:slow", &node.CallOptions{Timeout: 15 * time.Minute})
				done <- err
			}()
			<-started
			t0 := time.Now()
			cancel()
			if err := <-done; err == nil {
				t.Fatal("a cancelled call succeeded")
			}
			select {
			case c := <-causes:
				if !errors.Is(c, node.ErrCallerCancelled) {
					t.Fatalf("handler's context ended with %v", c)
				}
				t.Logf("cancel reached the handler in %s", time.Since(t0))
			case <-time.After(5 * time.Second):
				t.Fatal("the handler never learnt of the cancellation")
			}

			// A caller's deadline passing is giving up too.
			go func() {
				_, err := callWith(m, context.Background(), "read:slow", &node.CallOptions{Timeout: 300 * time.Millisecond})
				done <- err
			}()
			<-started
			if err := <-done; trust.CodeOf(err) != protocol.CodeUnavailable {
				t.Fatalf("timed-out call: %v", err)
			}
			select {
			case c := <-causes:
				if !errors.Is(c, node.ErrCallerCancelled) {
					t.Fatalf("handler's context ended with %v", c)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the handler never learnt that the caller's deadline passed")
			}
		})
	}
}

// A call cancelled before it was sent, or a stream reset before its
// request was whole, runs no handler.
func TestCancelledBeforeArrivalRunsNothing(t *testing.T) {
	m := longMesh(t, "tcp", nil)
	var runs atomic.Int32
	_ = m.Agents["worker"].Node.Handle("read:slow", func(context.Context, *node.Request) ([]byte, error) {
		runs.Add(1)
		return nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := callWith(m, ctx, "read:slow", nil); err == nil {
		t.Fatal("a call cancelled before it was sent succeeded")
	}
	raw, err := m.Agents["orchestrator"].Node.SealRequest(m.Agents["worker"].ID(), "read:slow", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Agents["orchestrator"].Node.Host().NewStream(context.Background(), m.Agents["worker"].ID(), wire.ProtocolRPC)
	if err != nil {
		t.Fatal(err)
	}
	// Half a frame: the length, then part of the body, then a reset.
	_, _ = s.Write(binary.AppendUvarint(nil, uint64(len(raw))))
	_, _ = s.Write(raw[:len(raw)/2])
	s.Reset()
	time.Sleep(500 * time.Millisecond)
	if r := runs.Load(); r != 0 {
		t.Fatalf("%d handler runs for calls that never arrived", r)
	}
	// An honest call still goes through.
	if _, err := callWith(m, context.Background(), "read:slow", nil); err != nil {
		t.Fatal(err)
	}
}

// A handler's progress messages reach the caller, signed and in order,
// before the reply; the handler cannot send more than the bound, nor after
// its reply.
func TestProgressReachesCaller(t *testing.T) {
	m := longMesh(t, "tcp", nil)
	var late *node.Request
	// 256 signed progress messages take longer than the mesh's 500 ms
	// handler timeout under the race detector: this handler has its own.
	_ = m.Agents["worker"].Node.HandleWith("read:slow", func(ctx context.Context, r *node.Request) ([]byte, error) {
		late = r
		for i := range node.MaxProgressPerCall {
			if err := r.Progress(ctx, fmt.Appendf(nil, `{"progress":%d}`, i+1)); err != nil {
				return nil, err
			}
		}
		if err := r.Progress(ctx, []byte("one too many")); err == nil {
			return nil, errors.New("progress past the bound was sent")
		}
		if err := r.Progress(ctx, make([]byte, node.MaxProgressBody+1)); err == nil {
			return nil, errors.New("a progress body over the bound was sent")
		}
		return []byte("done"), nil
	}, node.HandlerOptions{Timeout: 30 * time.Second})
	var got []node.Progress
	rep, err := callWith(m, context.Background(), "read:slow", &node.CallOptions{Timeout: 10 * time.Second,
		OnProgress: func(p node.Progress) { got = append(got, p) }})
	if err != nil || string(rep.Body) != "done" {
		t.Fatalf("call: %v", err)
	}
	if len(got) != node.MaxProgressPerCall {
		t.Fatalf("%d progress messages, want %d", len(got), node.MaxProgressPerCall)
	}
	for i, p := range got {
		if p.Seq != i+1 || string(p.Body) != fmt.Sprintf(`{"progress":%d}`, i+1) || p.CorrelationID != rep.CorrelationID || p.From != m.Agents["worker"].ID() {
			t.Fatalf("progress %d: %+v", i, p)
		}
	}
	if err := late.Progress(context.Background(), []byte("after")); !errors.Is(err, node.ErrCallDone) {
		t.Fatalf("progress after the reply: %v", err)
	}
}

// rogueWorker replaces the worker's RPC handler with one that answers
// every request with the envelopes of answer, then a signed reply.
func rogueWorker(t *testing.T, m *simulations.Mesh, answer func(req *protocol.Envelope) [][]byte) {
	worker := m.Agents["worker"]
	simulations.AnswerRaw(worker.Node.Host(), func(_ int64, req *protocol.Envelope) [][]byte {
		reply, _ := protocol.Seal(worker.Identity, &protocol.Envelope{Kind: protocol.KindReply,
			RecipientPeer: req.Sender, Action: req.Action, Payload: []byte("done"), CorrelationID: req.CorrelationID}, time.Now())
		return append(answer(req), reply)
	})
}

func progressEnv(t *testing.T, m *simulations.Mesh, signer string, to trust.PublicKey, req *protocol.Envelope, corr protocol.CorrelationID, body []byte) []byte {
	raw, err := protocol.Seal(m.Agents[signer].Identity, &protocol.Envelope{Kind: protocol.KindProgress, RecipientPeer: to,
		Action: req.Action, Payload: body, CorrelationID: corr}, time.Now())
	if err != nil {
		t.Error(err)
	}
	return raw
}

// A callee that floods progress gets MaxProgressPerCall through, then the
// call fails with progress_bound; an oversized one fails it at once. The
// caller's next call (elsewhere, or to an honest worker) is not affected.
func TestProgressFloodIsBounded(t *testing.T) {
	m := longMesh(t, "tcp", nil)
	orch := m.Agents["orchestrator"].Identity.Public()
	for _, tc := range []struct {
		name     string
		frames   func(req *protocol.Envelope) [][]byte
		wantSeen int
	}{
		{"flood", func(req *protocol.Envelope) (fs [][]byte) {
			for range node.MaxProgressPerCall + 50 {
				fs = append(fs, progressEnv(t, m, "worker", orch, req, req.CorrelationID, []byte("p")))
			}
			return fs
		}, node.MaxProgressPerCall},
		{"oversized", func(req *protocol.Envelope) [][]byte {
			return [][]byte{progressEnv(t, m, "worker", orch, req, req.CorrelationID, make([]byte, 64<<10))}
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rogueWorker(t, m, tc.frames)
			seen := 0
			start := time.Now()
			_, err := callWith(m, context.Background(), "read:slow", &node.CallOptions{Timeout: 10 * time.Second,
				OnProgress: func(node.Progress) { seen++ }})
			if trust.CodeOf(err) != protocol.CodeProgressBound {
				t.Fatalf("flooded call: %v", err)
			}
			if seen != tc.wantSeen {
				t.Fatalf("the caller saw %d progress messages, want %d", seen, tc.wantSeen)
			}
			t.Logf("failed in %s: %v", time.Since(start), err)
		})
	}
}

// Progress that is not the callee's own to this call (signed by a third
// party, addressed to another agent, of another call, or a request posing
// as progress) fails the call, and OnProgress never sees it.
func TestProgressFromThirdPartyRefused(t *testing.T) {
	m := longMesh(t, "tcp", nil)
	orch := m.Agents["orchestrator"].Identity.Public()
	mallory := m.Agents["mallory"].Identity.Public()
	for _, tc := range []struct {
		name  string
		frame func(req *protocol.Envelope) []byte
		code  trust.Code
	}{
		{"signed by mallory", func(req *protocol.Envelope) []byte {
			return progressEnv(t, m, "mallory", orch, req, req.CorrelationID, []byte("forged"))
		}, protocol.CodeImpersonation},
		{"addressed to mallory", func(req *protocol.Envelope) []byte {
			return progressEnv(t, m, "worker", mallory, req, req.CorrelationID, []byte("misrouted"))
		}, protocol.CodeWrongRecipient},
		{"another call", func(req *protocol.Envelope) []byte {
			return progressEnv(t, m, "worker", orch, req, protocol.NewCorrelationID(), []byte("other call"))
		}, trust.CodeMalformed},
		{"replayed", func(req *protocol.Envelope) []byte {
			p := progressEnv(t, m, "worker", orch, req, req.CorrelationID, []byte("twice"))
			return append([]byte{}, p...)
		}, protocol.CodeReplay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rogueWorker(t, m, func(req *protocol.Envelope) [][]byte {
				f := tc.frame(req)
				if tc.code == protocol.CodeReplay {
					return [][]byte{f, f}
				}
				return [][]byte{f}
			})
			var seen []string
			_, err := callWith(m, context.Background(), "read:slow", &node.CallOptions{Timeout: 10 * time.Second,
				OnProgress: func(p node.Progress) { seen = append(seen, string(p.Body)) }})
			if trust.CodeOf(err) != tc.code {
				t.Fatalf("call: %v, want %s", err, tc.code)
			}
			want := 0
			if tc.code == protocol.CodeReplay {
				want = 1 // the first copy was the callee's own
			}
			if len(seen) != want {
				t.Fatalf("OnProgress saw %q", seen)
			}
		})
	}
}

// A 15-minute call holds one of MaxConcurrentCalls: the next call is
// busy; when its caller cancels, the slot frees at once.
func TestLongCallHoldsASlot(t *testing.T) {
	m := longMesh(t, "tcp", func(name string, c *node.Config) {
		if name == "worker" {
			c.MaxConcurrentCalls = 1
		}
	})
	started := make(chan struct{}, 4)
	_ = m.Agents["worker"].Node.HandleWith("read:slow", func(ctx context.Context, _ *node.Request) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}, node.HandlerOptions{Timeout: 15 * time.Minute})
	_ = m.Agents["worker"].Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { return []byte("ok"), nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := callWith(m, ctx, "read:slow", &node.CallOptions{Timeout: 15 * time.Minute})
		done <- err
	}()
	<-started
	if _, err := callWith(m, context.Background(), "read:logs", nil); trust.CodeOf(err) != protocol.CodeBusy {
		t.Fatalf("a call while the long one holds the only slot: %v", err)
	}
	cancel()
	<-done
	if err := simulations.WaitFor(3*time.Second, func() error {
		_, err := callWith(m, context.Background(), "read:logs", nil)
		return err
	}); err != nil {
		t.Fatalf("the slot was not freed by the cancellation: %v", err)
	}
}

// The caller's W3C trace context travels signed: the handler gets it, and
// both audit lines carry it next to the correlation ID. A malformed or
// oversized one is refused by the caller's node before sending, and by the
// callee's before any handler (malformed): it is a signed claim, bounded,
// used for nothing else.
func TestTraceContextTravelsSigned(t *testing.T) {
	var audit syncWriter
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := simulations.NewMesh(ctx, []string{"orchestrator", "worker"}, simulations.Options{Audit: &audit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Grant("orchestrator", []string{"read:logs"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	const tp, ts = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=abc"
	got := make(chan [2]string, 4)
	_ = m.Agents["worker"].Node.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		got <- [2]string{r.Traceparent, r.Tracestate}
		return nil, nil
	})
	rep, err := callWith(m, ctx, "read:logs", &node.CallOptions{Traceparent: tp, Tracestate: ts})
	if err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != [2]string{tp, ts} {
		t.Fatalf("the handler got %q", g)
	}
	if err := simulations.WaitFor(2*time.Second, func() error {
		if n := strings.Count(audit.String(), `"correlation_id":"`+rep.CorrelationID.String()+`","traceparent":"`+tp+`","tracestate":"`+ts+`"`); n != 2 {
			return fmt.Errorf("%d audit lines with the trace context, want 2 (in and out)", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{tp + "00", strings.Replace(tp, "4bf9", "4BF9", 1), "00-00000000000000000000000000000000-00f067aa0ba902b7-01", strings.Repeat("a", 4096)} {
		if _, err := callWith(m, ctx, "read:logs", &node.CallOptions{Traceparent: bad}); trust.CodeOf(err) != trust.CodeMalformed {
			t.Fatalf("traceparent %.60q: %v", bad, err)
		}
	}
	if _, err := callWith(m, ctx, "read:logs", &node.CallOptions{Traceparent: tp, Tracestate: strings.Repeat("x", 513)}); trust.CodeOf(err) != trust.CodeMalformed {
		t.Fatalf("a 513-byte tracestate: %v", err)
	}
	// Sealed past the caller's check and sent raw: the callee refuses it.
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	env := &protocol.Envelope{Kind: protocol.KindRequest, RecipientPeer: worker.Identity.Public(), Action: "read:logs",
		Token: orch.Node.Tokens()[0], Traceparent: strings.Repeat("f", 4096)}
	raw, err := protocol.Seal(orch.Identity, env, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// It does not decode, so there is no correlation ID to answer: the
	// callee resets the stream and audits it malformed.
	if _, err := orch.Node.SendRaw(ctx, worker.ID(), raw); err == nil {
		t.Fatal("an oversized traceparent sent raw was answered")
	}
	if err := simulations.WaitFor(2*time.Second, func() error {
		for _, l := range strings.Split(audit.String(), "\n") {
			if strings.Contains(l, `"direction":"in"`) && strings.Contains(l, `"reason":"malformed"`) && strings.Contains(l, "traceparent is 4096 bytes") {
				return nil
			}
		}
		return errors.New("no inbound malformed audit line for the oversized traceparent")
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-got:
		t.Fatalf("a handler ran for a refused trace context: %q", g)
	default:
	}
}

// syncWriter is an io.Writer safe for concurrent use.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// The callee's watch of each call's stream ends with the call: after many
// calls, over TCP and QUIC, no goroutine per call is left behind.
func TestCallerWatchEndsWithTheCall(t *testing.T) {
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			m := longMesh(t, transport, nil)
			_ = m.Agents["worker"].Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) { return []byte("ok"), nil })
			if _, err := callWith(m, context.Background(), "read:logs", nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			before := runtime.NumGoroutine()
			for range 200 {
				if _, err := callWith(m, context.Background(), "read:logs", nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := simulations.WaitFor(5*time.Second, func() error {
				if n := runtime.NumGoroutine(); n > before+20 {
					return fmt.Errorf("%d goroutines after 200 calls, %d before", n, before)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
