package node

import (
	"testing"
	"time"

	"github.com/meshagent/meshagent/node/internal/gate"
	"github.com/meshagent/meshagent/protocol"
)

// No code is both the receiver's own and one charged to a sender or
// forwarder: receiverSide is disjoint from hostile, forwarderFault and
// authorFault. A receiverSide code never spends a peer's budget, however
// often; a code the sender could have avoided throttles it past the
// burst.
func TestReceiverSideIsNeverCharged(t *testing.T) {
	for _, c := range gate.ReceiverSideCodes() {
		if gate.Hostile(c) || forwarderFault[c] || authorFault[c] {
			t.Errorf("%s is the receiver's own and charged too", c)
		}
	}
	n, other, _ := nodeListing(t, time.Hour)
	from := other.PeerID()
	for _, c := range gate.ReceiverSideCodes() {
		for range 10 * gate.RejectBurst {
			if n.gate.Penalize(from, c) {
				t.Fatalf("cut off for %s", c)
			}
		}
		if left, charged := n.gate.Credit(from); charged || left != gate.RejectBurst || n.gate.Throttled(from) {
			t.Fatalf("after %d refusals %s: %d left, charged %v", 10*gate.RejectBurst, c, left, charged)
		}
	}
	for range gate.RejectBurst + 1 {
		n.gate.Penalize(from, protocol.CodeNoToken)
	}
	if !n.gate.Throttled(from) {
		t.Fatal("not throttled past the burst of no_token refusals")
	}
}
