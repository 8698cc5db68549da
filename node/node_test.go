//go:build meshsim

package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
	"github.com/meshagent/meshagent/wire"
)

func call(m *simulations.Mesh, from, to, action string) (*node.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.Agents[from].Node.Call(ctx, m.Agents[to].ID(), action, []byte("today"), nil)
}

func TestCallOverTCPAndQUIC(t *testing.T) {
	for _, tr := range []string{"tcp", "quic"} {
		t.Run(tr, func(t *testing.T) {
			m, runs := testMesh(t, tr)
			r, err := call(m, "orchestrator", "worker", "read:logs")
			if err != nil {
				t.Fatal(err)
			}
			if string(r.Body) != "logs for today" || runs.Load() != 1 {
				t.Fatalf("reply %q, runs %d", r.Body, runs.Load())
			}
			conns := m.Agents["orchestrator"].Node.Host().Network().ConnsToPeer(m.Agents["worker"].ID())
			if len(conns) == 0 {
				t.Fatal("no connection")
			}
			st := conns[0].ConnState()
			if tr == "tcp" && st.Security != "/tls/1.0.0" {
				t.Fatalf("security %q, want TLS", st.Security)
			}
			if tr == "quic" && st.Transport != "quic-v1" {
				t.Fatalf("transport %q", st.Transport)
			}
			// Both sides audited the call with the same correlation ID.
			var in, out bool
			for _, a := range m.Audit() {
				if a.CorrelationID == r.CorrelationID.String() && a.Decision == "accept" {
					in = in || a.Direction == "in"
					out = out || a.Direction == "out"
				}
			}
			if !in || !out {
				t.Fatalf("audit lacks the call: in=%v out=%v", in, out)
			}
		})
	}
}

// rejected asserts that err carries code, the handler never ran, and the
// worker audited a rejection with that reason.
func rejected(t *testing.T, m *simulations.Mesh, runs *atomic.Int32, err error, code trust.Code) {
	t.Helper()
	if trust.CodeOf(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
	if runs.Load() != 0 {
		t.Fatalf("handler ran %d times", runs.Load())
	}
	for _, a := range m.Audit() {
		if a.Direction == "in" && a.Recipient == m.Agents["worker"].ID().String() && a.Decision == "reject" && a.Reason == string(code) {
			return
		}
	}
	t.Fatalf("worker did not audit a %s rejection", code)
}

func TestThreatsOverTheWire(t *testing.T) {
	ctx := context.Background()
	t.Run("no token", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		_, err := call(m, "mallory", "worker", "read:logs")
		rejected(t, m, runs, err, protocol.CodeNoToken)
	})
	t.Run("stolen token", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		tok, _ := m.Grant("orchestrator", []string{"read:logs"}, nil, time.Hour)
		_, err := m.Agents["mallory"].Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, &node.CallOptions{Token: tok})
		rejected(t, m, runs, err, trust.CodeNotHolder)
	})
	t.Run("escalated delegation", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		tok, _ := m.Grant("orchestrator", []string{"read:logs", "write:reports"}, []string{"read:logs"}, time.Hour)
		mal := m.Agents["mallory"]
		forged := trusttest.ForgeDelegation(tok, m.Agents["orchestrator"].Identity, mal.Identity.Public(),
			trust.Grant{Scopes: []string{"write:reports"}, Expires: time.Now().Add(time.Hour)}, time.Now())
		m.Agents["worker"].Node.Handle("write:reports", func(context.Context, *node.Request) ([]byte, error) { runs.Add(1); return nil, nil })
		_, err := mal.Node.Call(ctx, m.Agents["worker"].ID(), "write:reports", nil, &node.CallOptions{Token: forged})
		rejected(t, m, runs, err, trust.CodeEscalation)
	})
	t.Run("self-signed chain", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		tok, _ := m.Grant("orchestrator", []string{"read:logs"}, []string{"read:logs"}, time.Hour)
		mal := m.Agents["mallory"]
		forged := trusttest.ForgeDelegation(tok, mal.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: time.Now().Add(time.Minute)}, time.Now())
		_, err := mal.Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, &node.CallOptions{Token: forged})
		rejected(t, m, runs, err, trust.CodeBadSignature)
	})
	t.Run("replay", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		orch := m.Agents["orchestrator"].Node
		raw, err := orch.SealRequest(m.Agents["worker"].ID(), "read:logs", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := orch.SendRaw(ctx, m.Agents["worker"].ID(), raw); err != nil {
			t.Fatal(err)
		}
		runs.Store(0)
		_, err = orch.SendRaw(ctx, m.Agents["worker"].ID(), raw)
		rejected(t, m, runs, err, protocol.CodeReplay)
		// Re-sent by another agent: its TLS identity is not the sender.
		_, err = m.Agents["mallory"].Node.SendRaw(ctx, m.Agents["worker"].ID(), raw)
		rejected(t, m, runs, err, protocol.CodeImpersonation)
	})
	t.Run("forged signature", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		orch := m.Agents["orchestrator"].Node
		raw, _ := orch.SealRequest(m.Agents["worker"].ID(), "read:logs", []byte("aaaa"), nil)
		i := strings.Index(string(raw), "aaaa")
		raw[i] = 'b' // altered body, signature kept
		_, err := orch.SendRaw(ctx, m.Agents["worker"].ID(), raw)
		rejected(t, m, runs, err, trust.CodeBadSignature)
	})
	t.Run("stale", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		var skew atomic.Int64
		// A DeadAfter longer than the jump: otherwise its own liveness
		// tick, reading the jumped clock, may declare the worker dead and
		// close the connection before the call (seen once in CI).
		m2, err := m.Add(ctx, "late", true, simulations.Options{DeadAfter: time.Hour, Configure: func(_ string, c *node.Config) {
			c.Clock = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Connect(ctx, "late", "worker"); err != nil {
			t.Fatal(err)
		}
		m.Grant("late", []string{"read:logs"}, nil, time.Hour)
		skew.Store(int64(6 * time.Minute)) // its clock jumps after it joined
		_, err = m2.Node.Call(ctx, m.Agents["worker"].ID(), "read:logs", nil, nil)
		rejected(t, m, runs, err, protocol.CodeStale)
	})
	t.Run("oversized and garbage frames", func(t *testing.T) {
		m, runs := testMesh(t, "tcp")
		h := m.Agents["mallory"].Node.Host()
		for _, frame := range [][]byte{make([]byte, protocol.DefaultMaxEnvelopeSize+10), []byte("garbage")} {
			s, err := h.NewStream(ctx, m.Agents["worker"].ID(), wire.ProtocolRPC)
			if err != nil {
				t.Fatal(err)
			}
			_ = msgio.NewVarintWriter(s).WriteMsg(frame)
			s.CloseWrite()
			_, err = msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
			if err == nil {
				t.Fatal("garbage got a reply")
			}
			s.Reset()
		}
		if runs.Load() != 0 {
			t.Fatal("handler ran")
		}
		// Honest traffic still flows.
		if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
			t.Fatal(err)
		}
	})
}

// An outsider with a TLS libp2p host but a credential from another anchor
// connects (TLS 1.3 lets the client finish first) but cannot call or stay.
func TestOutsiderCannotCallOrPublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, runs := testMesh(t, "tcp")
	out, err := m.Add(ctx, "outsider", false, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	worker := m.Agents["worker"]
	err = out.Node.Join(ctx, peer.AddrInfo{ID: worker.ID(), Addrs: worker.Node.Host().Addrs()})
	if err == nil {
		t.Fatal("outsider was admitted")
	}
	// Raw stream straight to the RPC protocol, skipping admission.
	h := out.Node.Host()
	h.Peerstore().AddAddrs(worker.ID(), worker.Node.Host().Addrs(), time.Minute)
	raw, _ := out.Node.SealRequest(worker.ID(), "read:logs", nil, nil)
	s, err := h.NewStream(ctx, worker.ID(), wire.ProtocolRPC)
	if err == nil {
		_ = msgio.NewVarintWriter(s).WriteMsg(raw)
		s.CloseWrite()
		_, _ = msgio.NewVarintReaderSize(s, 1<<20).ReadMsg()
		s.Reset()
	}
	if runs.Load() != 0 {
		t.Fatal("handler ran for an outsider")
	}
	// The worker's gater now refuses it.
	if err := simulations.WaitFor(5*time.Second, func() error {
		if len(worker.Node.Host().Network().ConnsToPeer(out.ID())) != 0 {
			return errors.New("outsider still connected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range m.Audit() {
		found = found || (a.Kind == "admission" && a.Decision == "reject" && a.Sender == out.ID().String())
	}
	if !found {
		t.Fatal("no audited admission rejection")
	}
}

// A Noise-only libp2p host cannot connect at all.
func TestNoiseOnlyPeerCannotConnect(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.Security(noise.ID, noise.New), libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	worker := m.Agents["worker"]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = h.Connect(ctx, peer.AddrInfo{ID: worker.ID(), Addrs: worker.Node.Host().Addrs()})
	if err == nil || !strings.Contains(err.Error(), "protocols not supported") {
		t.Fatalf("noise-only host: %v", err)
	}
}

func TestPubsubVerified(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub, err := m.Agents["worker"].Node.Subscribe("tasks")
	if err != nil {
		t.Fatal(err)
	}
	m.Grant("orchestrator", []string{"publish:tasks"}, nil, time.Hour)
	for _, name := range []string{"orchestrator", "mallory"} {
		if _, err := m.Agents[name].Node.Subscribe("tasks"); err != nil {
			t.Fatal(err)
		}
	}
	// Mallory has no token for publish:tasks: her message must be rejected.
	// Publish until the mesh has formed and the orchestrator's message arrives.
	var got *node.Message
	err = simulations.WaitFor(10*time.Second, func() error {
		_ = m.Agents["mallory"].Node.Publish(ctx, "tasks", "publish:tasks", []byte("evil"))
		if err := m.Agents["orchestrator"].Node.Publish(ctx, "tasks", "publish:tasks", []byte("job")); err != nil {
			return err
		}
		c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		msg, err := sub.Next(c)
		if err != nil {
			return err
		}
		got = msg
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Body) != "job" || got.From != m.Agents["orchestrator"].ID() {
		t.Fatalf("delivered %q from %s", got.Body, got.From)
	}
	rejectedNoToken := false
	for _, a := range m.Audit() {
		rejectedNoToken = rejectedNoToken || (a.Kind == "message" && a.Decision == "reject" && a.Reason == string(protocol.CodeNoToken))
	}
	if !rejectedNoToken {
		t.Fatal("mallory's message was not rejected")
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	m, _ := testMesh(t, "tcp")
	n := m.Agents["worker"].Node
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); !errors.Is(err, node.ErrClosed) {
		t.Fatalf("start after close: %v", err)
	}
}

// Every rejection spends the sender's budget. An agent that keeps retrying
// a call it has no token for is throttled past the budget (its requests are
// refused unchecked, and the throttle is audited) but stays connected and
// is served checks again once the budget refills; one that keeps sending
// forgeries is cut off.
func TestRejectionBudget(t *testing.T) {
	m, runs := testMesh(t, "tcp")
	ctx := context.Background()
	mal, worker := m.Agents["mallory"].Node, m.Agents["worker"].ID()
	var refused, throttled atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 75; i++ {
				_, err := mal.Call(ctx, worker, "read:logs", nil, nil)
				switch trust.CodeOf(err) {
				case protocol.CodeNoToken:
					refused.Add(1)
				default:
					throttled.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if refused.Load() < 100 || throttled.Load() == 0 || m.Agents["worker"].Node.Stats().Throttled == 0 {
		t.Fatalf("300 calls without a token: %d refused after the checks, %d otherwise, %d throttled at the worker",
			refused.Load(), throttled.Load(), m.Agents["worker"].Node.Stats().Throttled)
	}
	malID := m.Agents["mallory"].ID().String()
	var throttleAudited bool
	for _, a := range m.Audit() {
		if a.Sender == malID && a.Reason == string(protocol.CodeFlood) {
			if a.Kind == "admission" {
				t.Fatal("mallory was cut off for calls without a token")
			}
			throttleAudited = true
		}
	}
	if !throttleAudited {
		t.Fatal("the throttle was not audited")
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		_, err := mal.Call(ctx, worker, "read:logs", nil, nil)
		if trust.CodeOf(err) != protocol.CodeNoToken {
			return fmt.Errorf("still throttled: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Forgeries: the first one checked once the budget is spent cuts
	// mallory off (until then they are refused unchecked).
	cutOff := func() bool {
		for _, a := range m.Audit() {
			if a.Kind == "admission" && a.Reason == string(protocol.CodeFlood) && a.Sender == malID {
				return true
			}
		}
		return false
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		raw, _ := mal.SealRequest(worker, "read:logs", nil, nil)
		raw[len(raw)-1] ^= 1
		_, _ = mal.SendRaw(ctx, worker, raw)
		if !cutOff() {
			return fmt.Errorf("not cut off")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := mal.Call(ctx, worker, "read:logs", nil, nil); trust.CodeOf(err) != protocol.CodeUnavailable {
		t.Fatalf("after the forgeries: %v, want the connection refused", err)
	}
	if runs.Load() != 0 {
		t.Fatal("handler ran")
	}
	// Honest traffic still flows.
	if _, err := call(m, "orchestrator", "worker", "read:logs"); err != nil {
		t.Fatal(err)
	}
}
