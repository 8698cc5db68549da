//go:build meshsim

package node_test

import (
	"context"
	"testing"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trusttest"
	"github.com/meshagent/meshagent/wire"
)

// TestTorsionSignedEnvelopeRefused: an insider signs a request with a
// point of order 8 added to R, a signature that the cofactored equation
// (RFC 8032's, every batch verifier's) accepts and crypto/ed25519 refuses.
// Over a real connection the worker refuses it as crypto/ed25519 does,
// audits the refusal and never runs the handler; the same request signed
// honestly then runs it, so the refusal is the signature's.
func TestTorsionSignedEnvelopeRefused(t *testing.T) {
	ctx := context.Background()
	m, runs := testMesh(t, "tcp")
	orch := m.Agents["orchestrator"]
	worker := m.Agents["worker"].ID()
	raw, err := orch.Node.SealRequest(worker, "read:logs", []byte("body"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var env protocolpb.Envelope
	if err := proto.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	env.Signature = trusttest.TorsionSignature(orch.Identity, wire.DomainEnvelope, env.Body)
	pub := orch.Identity.Public()
	signed := append([]byte(wire.DomainEnvelope), env.Body...)
	if !voi.VerifyWithOptions(pub[:], signed, env.Signature, &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}) {
		t.Fatal("the cofactored equation refuses the crafted signature: the test would prove nothing")
	}
	forged, _ := proto.Marshal(&env)
	_, err = orch.Node.SendRaw(ctx, worker, forged)
	rejected(t, m, runs, err, trust.CodeBadSignature)

	raw, err = orch.Node.SealRequest(worker, "read:logs", []byte("body"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := orch.Node.SendRaw(ctx, worker, raw); err != nil || runs.Load() != 1 {
		t.Fatalf("honest request: %v, handler ran %d times", err, runs.Load())
	}
}
