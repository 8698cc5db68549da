package node

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/protocol/protocolpb"
)

// No registry record, at its largest, makes gossipsub send IDONTWANT:
// the largest record message is under the threshold at every heartbeat.
func TestRecordsSendNoIDontWant(t *testing.T) {
	a := &protocolpb.Announcement{Body: []byte(strings.Repeat("b", discovery.MaxRecordSize-80)), Signature: make([]byte, 64)}
	if n := proto.Size(a); n > discovery.MaxRecordSize {
		t.Fatalf("test record of %d bytes is over the limit", n)
	}
	b, _ := proto.Marshal(&protocolpb.RegistryMessage{Msg: &protocolpb.RegistryMessage_Announce{Announce: a}})
	for _, hb := range []time.Duration{10 * time.Millisecond, time.Second, 30 * time.Second} {
		if p := gossipParams(hb); len(b) >= p.IDontWantMessageThreshold {
			t.Errorf("heartbeat %s: a record message of %d bytes passes the IDONTWANT threshold %d", hb, len(b), p.IDontWantMessageThreshold)
		}
	}
}
