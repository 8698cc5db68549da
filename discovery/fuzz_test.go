package discovery

import (
	"bytes"
	"fmt"
	"slices"
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
	advertising, _ := proto.Marshal(fx.advertising(f, 0, 8, []string{"call:a", "read:logs"}).Proto())
	f.Add(advertising)
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
		reg := fx.registry()
		_, _ = reg.Announce(rec, Direct, t0)
		// What the registry keeps (names shared or not) is the record.
		if held := reg.Record(rec.Agent); held != nil {
			if !bytes.Equal(held.Proto().Body, a.Body) || !bytes.Equal(held.Proto().Signature, a.Signature) || !slices.Equal(held.Actions(), rec.Actions()) {
				t.Fatal("the record held differs from the record received")
			}
			hd, hok := held.AdvertDigest()
			if rd, rok := rec.AdvertDigest(); hd != rd || hok != rok || !held.Credential.Equal(rec.Credential) || fmt.Sprint(held.Addrs()) != fmt.Sprint(rec.Addrs()) {
				t.Fatal("the record held reads back differently")
			}
		}
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

// FuzzShareNames signs arbitrary record bodies as a real agent, so that
// every encoding of the names (runs, order, length forms) reaches the
// registry: what it keeps, names shared or not, must encode and read back
// exactly as the record received.
func FuzzShareNames(f *testing.F) {
	fx := newFx(f, 1)
	for _, names := range [][]string{nil, {"read:logs"}, {"call:a", "call:b", "read:logs"}} {
		f.Add(fx.advertising(f, 0, 8, names).Proto().Body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a := &protocolpb.Announcement{Body: body, Signature: fx.agents[0].Sign(DomainAnnounce, body)}
		rec, err := ParseRecord(a)
		if err != nil {
			return
		}
		reg := fx.registry()
		if _, err := reg.Announce(rec, Direct, t0); err != nil {
			return
		}
		held := reg.Record(rec.Agent)
		hp := held.Proto()
		if !bytes.Equal(hp.Body, body) || !bytes.Equal(hp.Signature, a.Signature) || !reg.Holds(a) {
			t.Fatal("the record held does not encode as the record received")
		}
		hd, hok := held.AdvertDigest()
		rd, rok := rec.AdvertDigest()
		if !slices.Equal(held.Actions(), rec.Actions()) || hd != rd || hok != rok || !held.Credential.Equal(rec.Credential) ||
			fmt.Sprint(held.Addrs()) != fmt.Sprint(rec.Addrs()) || held.Seq != rec.Seq || !held.Timestamp.Equal(rec.Timestamp) {
			t.Fatal("the record held reads back differently")
		}
		if reg.SharedNames() != 0 && held.names == "" || reg.SharedNames() > 1 {
			t.Fatalf("%d runs of names shared for one record", reg.SharedNames())
		}
	})
}
