//go:build meshsim

package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// renew sends one renewal request from one agent to another and returns
// the error code of the answer ("" for a new credential).
func renew(t *testing.T, m *simulations.Mesh, from, to string, req []byte) string {
	t.Helper()
	code, err := tryRenew(m, from, to, req)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func tryRenew(m *simulations.Mesh, from, to string, req []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := m.Agents[from].Node.Host().NewStream(ctx, m.Agents[to].ID(), wire.ProtocolRenew)
	if err != nil {
		return "", err
	}
	defer s.Close()
	if err := msgio.NewVarintWriter(s).WriteMsg(req); err != nil {
		return "", err
	}
	raw, err := msgio.NewVarintReaderSize(s, 1<<16).ReadMsg()
	if err != nil {
		return "", err
	}
	var resp protocolpb.RenewResponse
	if err := proto.Unmarshal(raw, &resp); err != nil {
		return "", err
	}
	if resp.ErrorCode == "" && resp.Credential == nil {
		return "", errors.New("neither a credential nor an error")
	}
	return resp.ErrorCode, nil
}

func renewRequest(c *trust.Credential) []byte {
	b, _ := proto.Marshal(&protocolpb.RenewRequest{Credential: c.Proto()})
	return b
}

// An issuer renews the requester's own valid credential, and refuses (with
// an audited reason) another agent's credential, a request that does not
// decode, a dead requester, and a revoked one.
func TestRenewalRefusals(t *testing.T) {
	m, err := simulations.NewMesh(context.Background(), []string{"orchestrator", "mallory"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	if _, err := m.Add(ctx, "issuer", true, simulations.Options{Configure: func(_ string, c *node.Config) { c.Issuer = m.Anchor }}); err != nil {
		t.Fatal(err)
	}
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error { return m.Converged("alive") }); err != nil {
		t.Fatal(err)
	}
	mal := m.Agents["mallory"]
	if code := renew(t, m, "mallory", "issuer", renewRequest(mal.Credential)); code != "" {
		t.Fatalf("own credential refused: %s", code)
	}
	if code := renew(t, m, "mallory", "issuer", renewRequest(m.Agents["orchestrator"].Credential)); code != string(protocol.CodeImpersonation) {
		t.Fatalf("another agent's credential: %q, want impersonation", code)
	}
	if code := renew(t, m, "mallory", "issuer", []byte{0xff, 0x01}); code != string(trust.CodeMalformed) {
		t.Fatalf("garbage: %q, want malformed", code)
	}
	for _, want := range []trust.Code{protocol.CodeImpersonation, trust.CodeMalformed} {
		if !audited(m, "renewal", "mallory", "issuer", want) {
			t.Fatalf("refusal %s not audited", want)
		}
	}
	// A dead requester (frozen past the timeout: no sign of life) is
	// refused, whether it still reaches the issuer (dead) or not.
	frozen := time.Now()
	mal.Node.Freeze(time.Minute)
	if err := m.WaitSilentDead("issuer", "mallory", frozen, 3*time.Second+250*time.Millisecond, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	code, err := tryRenew(m, "mallory", "issuer", renewRequest(mal.Credential))
	if err == nil && code != string(protocol.CodeDead) {
		t.Fatalf("dead requester: %q, want dead", code)
	}
	if err == nil && !audited(m, "renewal", "mallory", "issuer", protocol.CodeDead) {
		t.Fatal("refusal of a dead requester not audited")
	}
	t.Logf("dead requester: code %q, error %v", code, err)
	// Revoke mallory: the issuer refuses to renew, whether it still
	// answers (revoked) or has already dropped mallory's connection.
	rev, err := trust.RevokeAgent(m.Anchor, mal.Identity.Public(), time.Now().Add(time.Second), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Agents["issuer"].Node.Revoke(ctx, rev.Bytes()); err != nil {
		t.Fatal(err)
	}
	code, err = tryRenew(m, "mallory", "issuer", renewRequest(mal.Credential))
	if err == nil && code != string(trust.CodeRevoked) {
		t.Fatalf("revoked credential: %q, want revoked", code)
	}
}

// The decision on a credential whose successor was revoked by serial: a
// serial revocation revokes that one credential, so an agent that kept an
// older credential of its own, still valid and unrevoked, can have it
// renewed. Revoking the agent is what cuts it off: every credential of it
// issued before the revocation is refused, renewal included.
func TestRenewalAfterTheSuccessorWasRevoked(t *testing.T) {
	m, err := simulations.NewMesh(context.Background(), []string{"agent"}, simulations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	iss, err := m.Add(ctx, "issuer", true, simulations.Options{Configure: func(_ string, c *node.Config) { c.Issuer = m.Anchor }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ConnectAll(ctx); err != nil {
		t.Fatal(err)
	}
	ag := m.Agents["agent"]
	older := ag.Credential
	successor, err := trust.IssueCredential(m.Anchor, ag.Identity.Public(), "agent", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bySerial, err := trust.RevokeCredential(m.Anchor, successor.Serial, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Node.Revoke(ctx, bySerial.Bytes()); err != nil {
		t.Fatal(err)
	}
	if code := renew(t, m, "agent", "issuer", renewRequest(successor)); code != string(trust.CodeRevoked) {
		t.Fatalf("the revoked successor: %q, want revoked", code)
	}
	// At most one renewal a heartbeat per agent: retry past the limit.
	renewOnce := func(c *trust.Credential) string {
		var code string
		_ = simulations.WaitFor(5*time.Second, func() error {
			code = renew(t, m, "agent", "issuer", renewRequest(c))
			if code == string(protocol.CodeFlood) {
				return errors.New("rate-limited")
			}
			return nil
		})
		return code
	}
	if code := renewOnce(older); code != "" {
		t.Fatalf("the older, unrevoked credential: %q, want it renewed", code)
	}
	byAgent, err := trust.RevokeAgent(m.Anchor, ag.Identity.Public(), time.Now().Add(time.Second), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Node.Revoke(ctx, byAgent.Bytes()); err != nil {
		t.Fatal(err)
	}
	// The agent is dropped at once (its connection closed); the issuer's
	// verdict on its credential is what the test checks.
	if err := iss.Node.Verifier().VerifyCredential(older, time.Now()); trust.CodeOf(err) != trust.CodeRevoked {
		t.Fatalf("the older credential after the agent's revocation: %v, want revoked", err)
	}
}
