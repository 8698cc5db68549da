package node

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/internal/cputime"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// A sync answer filled with records this node refuses for its own
// configuration (credentials of an anchor it does not trust), each validly
// self-signed, costs the node a decode per record, not a signature check,
// and at most maxRefusedPerAnswer of them are looked at. (Before: one
// signature check each, the whole answer, nothing charged: 20 000 records
// cost 1.8 s of CPU.)
func TestSyncAnswerOfRefusedRecordsIsCheap(t *testing.T) {
	n, _, _ := nodeListing(t, time.Second)
	other, _ := trust.GenerateAnchorKey(rand.Reader)
	now := time.Now()
	const records = 2000
	resp := &protocolpb.SyncResponse{}
	for i := range records {
		id, _ := trust.GenerateIdentity(rand.Reader)
		cred, err := trust.IssueCredential(other, id.Public(), fmt.Sprintf("x%d", i), now.Add(-time.Second), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := discovery.NewRecord(id, cred, nil, 1, time.Second, now)
		if err != nil {
			t.Fatal(err)
		}
		resp.Announcements = append(resp.Announcements, rec.Proto())
	}
	// The cost of one signature check here (race detector and machine
	// included), to compare with: each under a key of its own, as in the
	// answer, so that the verifier's key cache does not serve them. Both
	// in this thread's CPU time: what ran, not the wait for a CPU while
	// other packages' tests run.
	defer cputime.LockThread()()
	start := cputime.Thread()
	for _, a := range resp.Announcements[:200] {
		if _, err := discovery.ParseRecord(a); err != nil {
			t.Fatal(err)
		}
	}
	perCheck := (cputime.Thread() - start) / 200
	responder := peer.ID("responder")
	start = cputime.Thread()
	n.syncer.Apply(responder, resp)
	took := cputime.Thread() - start
	t.Logf("%d refused records applied in %s; one signature check costs %s here", records, took, perCheck)
	// Before: at least records × perCheck. The bound: a tenth of that.
	if took > records/10*perCheck {
		t.Fatalf("%d records refused for this node's anchors took %s, %.0f signature checks' worth", records, took, float64(took)/float64(perCheck))
	}
	if n.registry.Len() != 1 {
		t.Fatalf("the registry holds %d agents", n.registry.Len())
	}
}
