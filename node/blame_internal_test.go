package node

import (
	"testing"
	"time"

	"github.com/meshagent/meshagent/protocol"
)

// No code is both the receiver's own and one charged to a sender or
// forwarder: receiverSide is disjoint from hostile, forwarderFault and
// authorFault. A receiverSide code never spends a peer's budget, however
// often; a code the sender could have avoided throttles it past the
// burst.
func TestReceiverSideIsNeverCharged(t *testing.T) {
	for c := range receiverSide {
		if hostile[c] || forwarderFault[c] || authorFault[c] {
			t.Errorf("%s is the receiver's own and charged too", c)
		}
	}
	n, other, _ := nodeListing(t, time.Hour)
	from := other.PeerID()
	for c := range receiverSide {
		for range 10 * rejectBurst {
			if n.members.penalize(from, c) {
				t.Fatalf("cut off for %s", c)
			}
		}
		if left, charged := n.members.credit(from); charged || left != rejectBurst || n.members.throttled(from) {
			t.Fatalf("after %d refusals %s: %d left, charged %v", 10*rejectBurst, c, left, charged)
		}
	}
	for range rejectBurst + 1 {
		n.members.penalize(from, protocol.CodeNoToken)
	}
	if !n.members.throttled(from) {
		t.Fatal("not throttled past the burst of no_token refusals")
	}
}
