package records_test

import (
	"testing"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// A relayed record whose body and signature split the same bytes
// differently from an honest record's is other bytes: its refusal must not
// be remembered for the honest record. (refused.Key concatenates body and
// signature without their lengths, so a neighbour that relays such a split
// first makes the node refuse the honest record from the cache.)
func TestSplitRecordDoesNotPoisonCache(t *testing.T) {
	f := newFx(t, 1)
	honest := f.record(t, 0, 1)
	n := len(honest.Body)
	split := &protocolpb.Announcement{
		Body:      append([]byte(nil), honest.Body[:n-1]...),
		Signature: append([]byte{honest.Body[n-1]}, honest.Signature...),
	}
	_, _, err := f.in.Check(split, trust.PublicKey{})
	if err == nil {
		t.Fatal("the split record was accepted")
	}
	t.Logf("split record refused: %v", err)
	if rec, _, err := f.in.Check(honest, trust.PublicKey{}); err != nil || rec == nil {
		t.Fatalf("honest record refused after a split of its bytes was: %v", err)
	}
}
