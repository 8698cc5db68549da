//go:build meshsim

package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	p2pprotocol "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// callStreams counts h's open streams of proto with p.
func callStreams(h host.Host, p peer.ID, proto string) int {
	k := 0
	for _, c := range h.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			if string(s.Protocol()) == proto {
				k++
			}
		}
	}
	return k
}

// Sequential calls share one stream, over TCP and QUIC; concurrent calls
// each get one of their own, and all go back to the pool.
func TestCallsReuseStreams(t *testing.T) {
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr, func(t *testing.T) {
			m, runs := testMesh(t, tr)
			orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
			for i := range 20 {
				r, err := call(m, "orchestrator", "worker", "read:logs")
				if err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
				if string(r.Body) != "logs for today" {
					t.Fatalf("call %d: reply %q", i, r.Body)
				}
			}
			if runs.Load() != 20 {
				t.Fatalf("the handler ran %d times for 20 calls", runs.Load())
			}
			if got := callStreams(orch.Node.Host(), worker.ID(), wire.ProtocolRPC2); got != 1 {
				t.Fatalf("20 sequential calls left %d streams open, want 1", got)
			}
			if got := node.IdleStreams(orch.Node); got != 1 {
				t.Fatalf("the pool holds %d streams, want 1", got)
			}
			var wg sync.WaitGroup
			var failed atomic.Int32
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 10 {
						if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
							t.Error(err)
							failed.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			if failed.Load() != 0 || runs.Load() != 100 {
				t.Fatalf("%d failed, handler ran %d times for 100 calls", failed.Load(), runs.Load())
			}
			if got := node.IdleStreams(orch.Node); got < 1 || got > 8 {
				t.Fatalf("8 callers left %d idle streams, want 1 to 8", got)
			}
		})
	}
}

// A call in a slow handler holds its own stream: calls after it do not
// wait behind it.
func TestNoHeadOfLineBlocking(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	worker := m.Agents["worker"].Node
	release := make(chan struct{})
	entered := make(chan struct{})
	if err := worker.Handle("write:reports", func(ctx context.Context, _ *node.Request) ([]byte, error) {
		close(entered)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return []byte("slow"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil { // one idle stream
		t.Fatal(err)
	}
	slow := make(chan error, 1)
	go func() { _, err := call(m, "orchestrator", "worker", "write:reports"); slow <- err }()
	<-entered
	start := time.Now()
	for range 5 {
		if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("5 calls behind a slow one took %s", d)
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if got := node.IdleStreams(m.Agents["orchestrator"].Node); got != 2 {
		t.Fatalf("the pool holds %d streams, want 2", got)
	}
}

// warmStream makes one call, which leaves one idle stream in the
// orchestrator's pool, and resets the handler's count.
func warmStream(t *testing.T, m *simulations.Mesh, runs *atomic.Int32) {
	t.Helper()
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatal(err)
	}
	if got := node.IdleStreams(m.Agents["orchestrator"].Node); got != 1 {
		t.Fatalf("the pool holds %d streams, want 1", got)
	}
	runs.Store(0)
}

// A request on a reused stream is checked as a first one is: a peer that
// is refused meanwhile, no longer listed, dead, or whose token was
// revoked, has its next request on the stream refused, and the handler
// never runs.
func TestReusedStreamChecksEveryRequest(t *testing.T) {
	ctx := context.Background()
	// Refused at the gate (cut off, or filtered): the registry still
	// lists it, so only the gate's check, again on the reused stream,
	// keeps the handler from running.
	t.Run("refused", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		warmStream(t, m, runs)
		worker, orch := m.Agents["worker"].Node, m.Agents["orchestrator"]
		gated := worker.Stats().Gated
		worker.SetPeerFilter(func(p peer.ID) bool { return p != orch.ID() })
		_, err := call(m, "orchestrator", "worker", "read:logs")
		if err == nil || runs.Load() != 0 {
			t.Fatalf("a refused peer's call on a reused stream: %v, handler ran %d times", err, runs.Load())
		}
		// Reset unread at the gate (unavailable), not answered.
		if got := worker.Stats().Gated; got < gated+1 || trust.CodeOf(err) != protocol.CodeUnavailable {
			t.Fatalf("gated %d, want %d or more, and %v unavailable: the stream was not refused at the gate", got, gated+1, err)
		}
	})
	// No longer listed (its credential expired, in the worker's view):
	// reset unread, as a new stream would be at the gate.
	t.Run("unlisted", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		worker, orch := m.Agents["worker"].Node, m.Agents["orchestrator"]
		reg := node.Registry(worker)
		// The orchestrator's next beat lists it again (a sync fetches its
		// record): on a slow machine that can come before the call, which
		// then rightly passes the decision function. Try again then.
		for try := 1; ; try++ {
			warmStream(t, m, runs)
			gated := worker.Stats().Gated
			reg.Tick(time.Now().Add(400 * 24 * time.Hour)) // every credential expired
			if st := reg.State(orch.Identity.Public()); st != 0 {
				t.Fatalf("the orchestrator is still %v", st)
			}
			_, err := call(m, "orchestrator", "worker", "read:logs")
			if err == nil && reg.State(orch.Identity.Public()) != 0 && try < 5 {
				t.Logf("try %d: the orchestrator was listed again before its call", try)
				continue
			}
			if err == nil || runs.Load() != 0 {
				t.Fatalf("an unlisted peer's call on a reused stream: %v, handler ran %d times", err, runs.Load())
			}
			if got := worker.Stats().Gated; got < gated+1 || trust.CodeOf(err) != protocol.CodeUnavailable {
				t.Fatalf("gated %d, want %d or more, and %v unavailable: not refused at the gate", got, gated+1, err)
			}
			break
		}
	})
	// Dead (it left, in the worker's view): the decision function refuses
	// it with a signed answer, and the stream stays usable.
	t.Run("dead", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		warmStream(t, m, runs)
		worker, orch := m.Agents["worker"].Node, m.Agents["orchestrator"]
		reg := node.Registry(worker)
		key := orch.Identity.Public()
		if _, err := reg.Leave(key, reg.Seq(key)+1, time.Now()); err != nil {
			t.Fatal(err)
		}
		_, err := call(m, "orchestrator", "worker", "read:logs")
		if trust.CodeOf(err) != protocol.CodeDead || runs.Load() != 0 {
			t.Fatalf("a dead peer's call on a reused stream: %v, handler ran %d times", err, runs.Load())
		}
	})
	// Its token revoked: refused revoked, on the same stream, which
	// serves the next call with another token.
	t.Run("revoked", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		orch := m.Agents["orchestrator"]
		tok := orch.Node.Tokens()[0]
		warmStream(t, m, runs)
		rev, err := trust.RevokeLink(m.Anchor, tok.Links[0].ID, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Agents["worker"].Node.Revoke(ctx, rev.Bytes()); err != nil {
			t.Fatal(err)
		}
		// Sent with the revoked token: the orchestrator may have heard of
		// the revocation too, and would then pick none.
		_, err = orch.Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, &node.CallOptions{Token: tok})
		if trust.CodeOf(err) != trust.CodeRevoked || runs.Load() != 0 {
			t.Fatalf("a revoked token on a reused stream: %v, handler ran %d times", err, runs.Load())
		}
		fresh, err := m.Grant("orchestrator", []string{"read:logs"}, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := orch.Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, &node.CallOptions{Token: fresh}); err != nil {
			t.Fatal(err)
		}
		if got := callStreams(orch.Node.Host(), m.Agents["worker"].ID(), wire.ProtocolRPC2); got != 1 || runs.Load() != 1 {
			t.Fatalf("%d streams, %d runs after a refusal and a call: want 1 and 1", got, runs.Load())
		}
	})
}

// A call cancelled while its handler runs resets its stream, which never
// goes back to the pool: the next call gets its own reply on another.
func TestCancelledCallDiscardsItsStream(t *testing.T) {
	m, runs := testMesh(t, "tcp")
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	gone := make(chan error, 1)
	if err := worker.Node.Handle("write:reports", func(ctx context.Context, r *node.Request) ([]byte, error) {
		_ = r.Progress(ctx, []byte("half")) // a frame the caller reads before it gives up
		<-ctx.Done()
		gone <- context.Cause(ctx)
		return []byte("late reply"), nil
	}); err != nil {
		t.Fatal(err)
	}
	warmStream(t, m, runs)
	ctx, cancel := context.WithCancel(context.Background())
	progressed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		_, err := orch.Node.Call(ctx, worker.ID(), "write:reports", nil, &node.CallOptions{
			OnProgress: func(node.Progress) { progressed <- struct{}{} }})
		done <- err
	}()
	<-progressed
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cancelled call succeeded")
	}
	select {
	case cause := <-gone:
		if !errors.Is(cause, node.ErrCallerCancelled) {
			t.Fatalf("the handler's context ended with %v", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler never learned that the caller gave up")
	}
	if got := node.IdleStreams(orch.Node); got != 0 {
		t.Fatalf("the pool holds %d streams after a cancelled call on its one stream", got)
	}
	r, err := orch.Node.Call(context.Background(), worker.ID(), "read:logs", []byte("next"), nil)
	if err != nil || string(r.Body) != "logs for next" {
		t.Fatalf("the next call: %q, %v", r.Body, err)
	}
}

// A callee closes a stream idle for its timeout, saying goodbye first; a
// caller that sends on it meanwhile sends again on another stream, and the
// handler runs once.
func TestIdleStreamsAreClosed(t *testing.T) {
	m, runs := testMesh(t, "tcp")
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	node.SetServeIdle(worker.Node, 300*time.Millisecond)
	warmStream(t, m, runs)
	// The callee closed it; the caller does not know yet.
	if err := simulations.WaitFor(5*time.Second, func() error {
		if k := callStreams(worker.Node.Host(), orch.ID(), wire.ProtocolRPC2); k != 0 {
			return fmt.Errorf("the worker still holds %d streams", k)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := node.IdleStreams(orch.Node); got != 1 {
		t.Fatalf("the pool holds %d streams, want the closed one", got)
	}
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatalf("a call on a stream the callee closed: %v", err)
	}
	if runs.Load() != 1 {
		t.Fatalf("the handler ran %d times for one call", runs.Load())
	}

	// What the caller sees on the wire: its reply, then an empty frame
	// (goodbye), then the end of the stream.
	s := rawCall(t, m, wire.ProtocolRPC2)
	r := msgio.NewVarintReaderSize(s, 1<<20)
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := r.ReadMsg(); err != nil || len(b) != 0 {
		t.Fatalf("after the idle timeout: %d bytes, %v; want an empty frame", len(b), err)
	}
	if _, err := r.ReadMsg(); !errors.Is(err, io.EOF) {
		t.Fatalf("after goodbye: %v, want EOF", err)
	}
}

// rawCall opens a stream of proto from the orchestrator to the worker,
// sends one sealed request for read:logs and reads its reply.
func rawCall(t *testing.T, m *simulations.Mesh, proto string) network.Stream {
	t.Helper()
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	s, err := orch.Node.Host().NewStream(context.Background(), worker.ID(), p2pprotocol.ID(proto))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Reset() })
	raw, err := orch.Node.SealRequest(worker.ID(), "read:logs", []byte("raw"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := msgio.NewVarintWriter(s).WriteMsg(raw); err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	env, err := protocol.Open(reply, 1<<20, 1<<20)
	if err != nil || env.Kind != protocol.KindReply || string(env.Payload) != "logs for raw" {
		t.Fatalf("reply %+v, %v", env, err)
	}
	return s
}

// A peer keeps at most 32 streams waiting for a next request at a callee:
// past them, a stream is closed (goodbye) after its call.
func TestIdleStreamsPerPeerAreBounded(t *testing.T) {
	m, runs := testMesh(t, "tcp")
	orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
	const opened = 40
	var streams []network.Stream
	for range opened {
		streams = append(streams, rawCall(t, m, wire.ProtocolRPC2))
	}
	if runs.Load() != opened {
		t.Fatalf("the handler ran %d times for %d calls", runs.Load(), opened)
	}
	if err := simulations.WaitFor(5*time.Second, func() error {
		if k := node.IdleInbound(worker.Node, orch.ID()); k != 32 {
			return fmt.Errorf("%d idle streams of the orchestrator at the worker, want 32", k)
		}
		if k := callStreams(worker.Node.Host(), orch.ID(), wire.ProtocolRPC2); k != 32 {
			return fmt.Errorf("the worker holds %d streams, want 32", k)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	closed := 0
	for _, s := range streams {
		_ = s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if b, err := msgio.NewVarintReaderSize(s, 1<<20).ReadMsg(); err == nil && len(b) == 0 {
			closed++
		}
	}
	if closed != opened-32 {
		t.Fatalf("%d streams got goodbye, want %d", closed, opened-32)
	}
}

// Older peers, which speak only rpc/1.0.0, still call and are called.
func TestOlderPeersUseOneStreamPerCall(t *testing.T) {
	t.Run("caller", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		s := rawCall(t, m, wire.ProtocolRPC)
		if _, err := s.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("after the reply on rpc/1.0.0: %v, want EOF", err)
		}
		if runs.Load() != 1 {
			t.Fatalf("handler ran %d times", runs.Load())
		}
	})
	t.Run("callee", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		orch, worker := m.Agents["orchestrator"], m.Agents["worker"]
		worker.Node.Host().RemoveStreamHandler(wire.ProtocolRPC2) // identify tells the orchestrator
		if err := simulations.WaitFor(10*time.Second, func() error {
			if ok, _ := orch.Node.Host().Peerstore().SupportsProtocols(worker.ID(), wire.ProtocolRPC2); len(ok) != 0 {
				return fmt.Errorf("the orchestrator still takes the worker for a %s speaker", wire.ProtocolRPC2)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
				t.Fatal(err)
			}
		}
		if runs.Load() != 3 || node.IdleStreams(orch.Node) != 0 || callStreams(orch.Node.Host(), worker.ID(), wire.ProtocolRPC) != 0 {
			t.Fatalf("runs %d, pooled %d, open rpc/1.0.0 streams %d: want 3, 0, 0", runs.Load(),
				node.IdleStreams(orch.Node), callStreams(orch.Node.Host(), worker.ID(), wire.ProtocolRPC))
		}
	})
}
