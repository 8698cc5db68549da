//go:build meshsim

package simulations_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/trust/trusttest"
	"github.com/meshagent/meshagent/wire"
)

// threatMesh is 20 honest agents (ring plus chords) that all serve
// read:logs, plus mallory: an enrolled agent with a token for
// read:metrics only, whose clock can be skewed. Agents that are not
// neighbours reach each other through the addresses in their records. runs counts honest handler runs.
type threatMesh struct {
	m       *simulations.Mesh
	runs    atomic.Int32
	skew    atomic.Int64
	honest  []string
	mallory *simulations.Agent
	orchTok *trust.Token // honest agent-00's token for read:logs (delegatable)
}

func newThreatMesh(t *testing.T) *threatMesh {
	tm := &threatMesh{honest: simulations.AgentNames(20)}
	m := newMesh(t, 20, simulations.Options{HeartbeatInterval: 250 * time.Millisecond * raceScale, DeadAfter: 3 * time.Second * raceScale})
	tm.m = m
	ctx := context.Background()
	var err error
	tm.mallory, err = m.Add(ctx, "mallory", true, simulations.Options{HeartbeatInterval: 250 * time.Millisecond * raceScale, DeadAfter: 3 * time.Second * raceScale,
		Configure: func(_ string, c *node.Config) {
			c.Clock = func() time.Time { return time.Now().Add(time.Duration(tm.skew.Load())) }
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ConnectSparse(ctx, 1, 42); err != nil {
		t.Fatal(err)
	}
	for _, h := range tm.honest {
		_ = m.Agents[h].Node.Handle("read:logs", func(context.Context, *node.Request) ([]byte, error) {
			tm.runs.Add(1)
			return []byte("ok"), nil
		})
	}
	tm.orchTok, _ = m.Grant("agent-00", []string{"read:logs"}, []string{"read:logs"}, time.Hour)
	if _, err := m.Grant("mallory", []string{"read:metrics"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	converge(t, m, 15*time.Second)
	return tm
}

// honestCall checks that honest traffic still flows.
func (tm *threatMesh) honestCall(t *testing.T) {
	t.Helper()
	before := tm.runs.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tm.m.Agents["agent-00"].Node.Call(ctx, tm.m.Agents["agent-07"].ID(), "read:logs", nil, nil); err != nil {
		t.Fatalf("honest call failed: %v", err)
	}
	if tm.runs.Load() != before+1 {
		t.Fatal("honest handler did not run")
	}
}

// audited reports whether target's audit log holds a rejection with code.
func (tm *threatMesh) audited(target string, code trust.Code) bool {
	id := tm.m.Agents[target].ID().String()
	for _, a := range tm.m.Audit() {
		if a.Recipient == id && a.Direction == "in" && a.Decision == "reject" && a.Reason == string(code) {
			return true
		}
	}
	return false
}

func TestThreatModelInAMeshOfTwenty(t *testing.T) {
	tm := newThreatMesh(t)
	ctx := context.Background()
	mal := tm.mallory
	target := "agent-05"
	tid := tm.m.Agents[target].ID()
	now := time.Now()
	call := func(opts *node.CallOptions) error {
		_, err := mal.Node.Call(ctx, tid, "read:logs", nil, opts)
		return err
	}
	sendRaw := func(raw []byte) error { _, err := mal.Node.SendRaw(ctx, tid, raw); return err }
	orch := tm.m.Agents["agent-00"]

	cases := []struct {
		name   string
		attack func() error
		code   trust.Code
	}{
		{"forgery: signature by another key", func() error {
			raw, _ := mal.Node.SealRequest(tid, "read:logs", []byte("x"), tm.orchTok)
			raw[len(raw)-1] ^= 1
			return sendRaw(raw)
		}, trust.CodeBadSignature},
		{"tampering: body altered", func() error {
			raw, _ := mal.Node.SealRequest(tid, "read:logs", []byte("aaaa"), nil)
			i := strings.Index(string(raw), "aaaa")
			raw[i] = 'b'
			return sendRaw(raw)
		}, trust.CodeBadSignature},
		{"impersonation: an honest agent's envelope re-sent by mallory", func() error {
			raw, _ := orch.Node.SealRequest(tid, "read:logs", nil, nil)
			return sendRaw(raw)
		}, protocol.CodeImpersonation},
		{"replay to another node", func() error {
			raw, _ := orch.Node.SealRequest(tm.m.Agents["agent-06"].ID(), "read:logs", nil, nil)
			if _, err := orch.Node.SendRaw(ctx, tm.m.Agents["agent-06"].ID(), raw); err != nil {
				return fmt.Errorf("first send: %w", err)
			}
			tm.runs.Add(-1)
			_, err := orch.Node.SendRaw(ctx, tid, raw)
			return err
		}, protocol.CodeWrongRecipient},
		{"replay to the same node", func() error {
			raw, _ := orch.Node.SealRequest(tid, "read:logs", nil, nil)
			if _, err := orch.Node.SendRaw(ctx, tid, raw); err != nil {
				return fmt.Errorf("first send: %w", err)
			}
			tm.runs.Add(-1)
			_, err := orch.Node.SendRaw(ctx, tid, raw)
			return err
		}, protocol.CodeReplay},
		{"escalated delegation", func() error {
			mt := mal.Node.Tokens()[0]
			return call(&node.CallOptions{Token: trusttest.ForgeDelegation(mt, mal.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Minute)}, now)})
		}, trust.CodeEscalation},
		{"widened expiry", func() error {
			d, _ := tm.orchTok.Delegate(orch.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now)
			return call(&node.CallOptions{Token: trusttest.ForgeDelegation(d, mal.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(48 * time.Hour)}, now)})
		}, trust.CodeEscalation},
		{"wildcard scope", func() error {
			d, _ := tm.orchTok.Delegate(orch.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: now.Add(30 * time.Minute)}, now)
			return call(&node.CallOptions{Token: trusttest.ForgeDelegation(d, mal.Identity, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:*"}, Expires: now.Add(time.Minute)}, now)})
		}, trust.CodeWildcard},
		{"stolen token", func() error { return call(&node.CallOptions{Token: tm.orchTok}) }, trust.CodeNotHolder},
		{"expired token", func() error {
			tok, _ := trust.IssueToken(tm.m.Anchor, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, NotBefore: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour)}, now)
			return call(&node.CallOptions{Token: tok})
		}, trust.CodeExpired},
		{"not-yet-valid token", func() error {
			tok, _ := trust.IssueToken(tm.m.Anchor, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, NotBefore: now.Add(time.Hour), Expires: now.Add(2 * time.Hour)}, now)
			return call(&node.CallOptions{Token: tok})
		}, trust.CodeNotYetValid},
		{"revoked token", func() error {
			tok, _ := trust.IssueToken(tm.m.Anchor, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
			rev, _ := trust.RevokeLink(tm.m.Anchor, tok.Links[0].ID, now, time.Hour)
			if err := orch.Node.Revoke(ctx, rev.Bytes()); err != nil {
				return err
			}
			if err := simulations.WaitFor(5*time.Second, func() error {
				if tm.m.Agents[target].Node.Verifier().Revocations() == 0 {
					return fmt.Errorf("not yet")
				}
				return nil
			}); err != nil {
				return err
			}
			return call(&node.CallOptions{Token: tok})
		}, trust.CodeRevoked},
		{"untrusted root", func() error {
			a, _ := trust.GenerateAnchorKey(nil)
			tok, _ := trust.IssueToken(a, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
			return call(&node.CallOptions{Token: tok})
		}, trust.CodeUntrustedRoot},
		{"stale: sealed 6 minutes ago", func() error {
			tm.skew.Store(int64(-6 * time.Minute))
			defer tm.skew.Store(0)
			raw, _ := mal.Node.SealRequest(tid, "read:logs", nil, tm.orchTok)
			tm.skew.Store(0)
			return sendRaw(raw)
		}, protocol.CodeStale},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := tm.runs.Load()
			err := c.attack()
			if trust.CodeOf(err) != c.code {
				t.Fatalf("want %s, got %v", c.code, err)
			}
			if tm.runs.Load() != before {
				t.Fatal("an honest handler ran")
			}
			if !tm.audited(target, c.code) {
				t.Fatalf("%s did not audit a %s rejection", target, c.code)
			}
			tm.honestCall(t)
		})
	}

	t.Run("garbage, oversized frames and a flood", func(t *testing.T) {
		before := tm.runs.Load()
		h := mal.Node.Host()
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < 300; i += 8 {
					frame := []byte("garbage garbage")
					if i%50 == 0 {
						frame = make([]byte, protocol.DefaultMaxEnvelopeSize+1)
					}
					s, err := h.NewStream(ctx, tid, wire.ProtocolRPC)
					if err != nil {
						continue // the target may refuse streams mid-flood
					}
					_ = s.SetDeadline(time.Now().Add(5 * time.Second))
					_ = msgio.NewVarintWriter(s).WriteMsg(frame)
					_ = s.CloseWrite()
					_, _ = io.Copy(io.Discard, s) // until the target resets it
					_ = s.Reset()
				}
			}()
		}
		wg.Wait()
		if tm.runs.Load() != before {
			t.Fatal("an honest handler ran")
		}
		if !tm.audited(target, trust.CodeMalformed) || !tm.audited(target, trust.CodeTooLarge) {
			t.Fatal("garbage and oversized frames were not audited")
		}
		// Past the burst of rejections, the target cut mallory off.
		if !tm.audited(target, protocol.CodeFlood) {
			t.Fatal("the flood did not get mallory refused")
		}
		tm.honestCall(t)
		// The target still serves honest callers directly.
		ctxc, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := tm.m.Agents["agent-04"].Node.Call(ctxc, tid, "read:logs", nil, &node.CallOptions{Token: nil}); trust.CodeOf(err) != protocol.CodeNoToken {
			t.Fatalf("target not answering after the flood: %v", err)
		}
	})

	t.Run("a message without a token, published to the mesh", func(t *testing.T) {
		for _, h := range tm.honest {
			if _, err := tm.m.Agents[h].Node.Subscribe("tasks"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := mal.Node.Subscribe("tasks"); err != nil {
			t.Fatal(err)
		}
		if err := simulations.WaitFor(5*time.Second, func() error {
			raw, _ := mal.Node.SealMessage("tasks", "publish:tasks", []byte("evil"), mal.Node.Tokens()[0])
			_ = mal.Node.PublishRaw(ctx, "tasks", raw)
			for _, a := range tm.m.Audit() {
				if a.Kind == "message" && a.Decision == "reject" && a.Reason == string(trust.CodeScopeNotGranted) && a.Sender == mal.ID().String() {
					return nil
				}
			}
			return fmt.Errorf("no honest node rejected it yet")
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a dead agent speaks without a fresh heartbeat", func(t *testing.T) {
		// Another target: agent-05 refuses mallory since the flood.
		target := "agent-09"
		tid := tm.m.Agents[target].ID()
		call := func(opts *node.CallOptions) error {
			_, err := mal.Node.Call(ctx, tid, "read:logs", nil, opts)
			return err
		}
		var seen struct { // what the target concludes of mallory, for a failure
			sync.Mutex
			evs []string
		}
		tm.m.Agents[target].Node.OnEvent(func(e discovery.Event) {
			if e.Name == "mallory" {
				seen.Lock()
				seen.evs = append(seen.evs, fmt.Sprintf("%s %s→%s (%s)", e.At.Format(time.StampMilli), e.From, e.To, e.Reason))
				seen.Unlock()
			}
		})
		frozen := time.Now()
		mal.Node.Freeze(12 * time.Second * raceScale) // outlasts the verdict and the retries below
		if err := tm.m.WaitSilentDead(target, "mallory", frozen, (3*time.Second+250*time.Millisecond)*raceScale, 10*time.Second*raceScale); err != nil {
			t.Fatal(err)
		}
		before := tm.runs.Load()
		var err error
		_ = simulations.WaitFor(5*time.Second, func() error {
			err = call(&node.CallOptions{Token: tm.orchTok})
			if trust.CodeOf(err) == protocol.CodeUnavailable {
				return err
			}
			return nil
		})
		if trust.CodeOf(err) != protocol.CodeDead {
			seen.Lock()
			defer seen.Unlock()
			t.Fatalf("want dead, got %v; %s saw mallory go %v", err, target, seen.evs)
		}
		if tm.runs.Load() != before {
			t.Fatal("an honest handler ran")
		}
		tm.honestCall(t)
	})

	t.Run("an outsider completes TLS, runs gossipsub and never sends a hello", func(t *testing.T) {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(libp2ptls.ID, libp2ptls.New),
			libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		ps, err := pubsub.NewGossipSub(cctx, h)
		if err != nil {
			t.Fatal(err)
		}
		var got atomic.Int64
		for _, name := range []string{wire.TopicRegistry, wire.TopicRevocations, "tasks"} {
			topic, _ := ps.Join(name)
			sub, _ := topic.Subscribe()
			go func() {
				for {
					if _, err := sub.Next(cctx); err != nil {
						return
					}
					got.Add(1)
				}
			}()
		}
		victim := tm.m.Agents["agent-11"].Node
		if err := h.Connect(cctx, peer.AddrInfo{ID: victim.ID(), Addrs: victim.Host().Addrs()}); err != nil {
			t.Fatalf("TLS refused before admission: %v", err)
		}
		// Traffic while it listens: a record announced, a revocation spread.
		_, _ = tm.m.Grant("agent-11", []string{"publish:tasks"}, nil, time.Hour)
		if err := simulations.WaitFor(10*time.Second*raceScale, func() error {
			_ = victim.Publish(cctx, "tasks", "publish:tasks", []byte("job"))
			if h.Network().Connectedness(victim.ID()) == network.Connected {
				return fmt.Errorf("the outsider is still connected")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n := got.Load(); n != 0 {
			t.Fatalf("the outsider received %d messages before admission", n)
		}
		tm.honestCall(t)
	})

	t.Run("a revocation forged under the ID of a genuine one", func(t *testing.T) {
		tok, _ := trust.IssueToken(tm.m.Anchor, mal.Identity.Public(), trust.Grant{Scopes: []string{"read:metrics"}, Expires: now.Add(time.Hour)}, now)
		genuine, _ := trust.RevokeLink(tm.m.Anchor, tok.Links[0].ID, now, time.Hour)
		if err := tm.m.Agents["agent-02"].Node.Revoke(ctx, genuine.Bytes()); err != nil {
			t.Fatal(err)
		}
		var signed trustpb.Signed
		_ = proto.Unmarshal(genuine.Bytes(), &signed)
		var body trustpb.RevocationBody
		_ = proto.Unmarshal(signed.Body, &body)
		victim := tm.m.Agents["agent-03"].Identity.Public()
		body.LinkId, body.Agent, body.Before = nil, victim[:], now.Add(time.Hour).Unix()
		signed.Body, _ = proto.Marshal(&body)
		forged, _ := proto.Marshal(&signed)
		held := mal.Node.Stats().Revocations
		if err := mal.Node.Revoke(ctx, forged); trust.CodeOf(err) != trust.CodeBadSignature {
			t.Fatalf("the forgery: %v, want bad_signature", err)
		}
		if mal.Node.Stats().Revocations != held {
			t.Fatal("the forgery was stored")
		}
		if st := tm.m.StateOf("agent-04", "agent-03"); st != "alive" {
			t.Fatalf("agent-04 sees the victim %s", st)
		}
		tm.honestCall(t)
	})

	t.Run("an outsider with a credential from another anchor", func(t *testing.T) {
		out, err := tm.m.Add(ctx, "outsider", false, simulations.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range tm.honest[:5] {
			if err := tm.m.Connect(ctx, "outsider", h); err == nil {
				t.Fatalf("%s admitted the outsider", h)
			}
			found := false
			for _, a := range tm.m.Audit() {
				found = found || (a.Kind == "admission" && a.Sender == out.ID().String() && a.Recipient == tm.m.Agents[h].ID().String() && a.Reason == string(trust.CodeUntrustedRoot))
			}
			if !found {
				t.Fatalf("%s did not audit the outsider", h)
			}
		}
		tm.honestCall(t)
	})
}
