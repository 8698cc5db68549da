package discovery

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// The fuzz targets decode arbitrary bytes as they arrive from the wire (an
// announcement on the registry topic or in a sync response, a beat in a
// beat batch), run the checks and apply the result to a registry: nothing
// may panic, every error carries a code, and whatever verifies must verify
// again from its own encoding. Seeds live in testdata/fuzz/.

func FuzzParseRecord(f *testing.F) {
	fx := newFx(f, 1)
	good, _ := proto.Marshal(fx.record(f, 0, 7, t0).Proto())
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var a protocolpb.Announcement
		if proto.Unmarshal(data, &a) != nil {
			return
		}
		rec, err := ParseRecord(&a)
		if err != nil {
			if trust.CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		_, _ = fx.registry().Announce(rec, Direct, t0)
		again, err := ParseRecord(rec.Proto())
		if err != nil || again.Seq != rec.Seq || !again.Agent.Equal(rec.Agent) {
			t.Fatalf("re-encoded record does not parse: %v", err)
		}
		// What the record keeps aliases its own buffer: the credential and
		// the addresses read back the same.
		if !again.Credential.Equal(rec.Credential) || again.NumAddrs() != rec.NumAddrs() || len(again.Addrs()) != rec.NumAddrs() {
			t.Fatalf("re-encoded record differs: credential %v, %d/%d addresses", again.Credential.Equal(rec.Credential), again.NumAddrs(), rec.NumAddrs())
		}
	})
}

func FuzzVerifyBeat(f *testing.F) {
	fx := newFx(f, 1)
	good, _ := proto.Marshal(SignBeat(fx.agents[0], 9, t0))
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b protocolpb.Beat
		if proto.Unmarshal(data, &b) != nil {
			return
		}
		agent, ts, err := VerifyBeat(&b)
		if err != nil {
			if trust.CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		r := fx.registry()
		_, _ = r.Announce(fx.record(t, 0, 1, t0), Direct, t0)
		_, _ = r.Heartbeat(agent, b.Seq, ts, t0)
		raw, _ := proto.Marshal(&b)
		var again protocolpb.Beat
		if proto.Unmarshal(raw, &again) != nil {
			t.Fatal("re-encoded beat does not decode")
		}
		if a2, _, err := VerifyBeat(&again); err != nil || !a2.Equal(agent) {
			t.Fatalf("re-encoded beat does not verify: %v", err)
		}
	})
}
