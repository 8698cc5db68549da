package discovery

import (
	"crypto/sha256"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// FuzzVerifyAdvert decodes arbitrary bytes as the body of an agent's
// advertisement, as a peer serves it. The agent signs them and its record
// names the scopes they hold and their digest, so that the fuzzer reaches
// every check past the signature: nothing may panic, every error carries a
// code, and what verifies names exactly the record's actions, each one
// well formed. Seeds live in testdata/fuzz/.
func FuzzVerifyAdvert(f *testing.F) {
	id, cred := advertAgent(f)
	good, _, _, err := SignAdvert(id, []Action{{Scope: "read:logs", Description: "the logs",
		InputSchema: json.RawMessage(`{"type":"object"}`)}, {Scope: "write:x"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good.Body)
	f.Add([]byte{})
	now := time.Now()
	f.Fuzz(func(t *testing.T, body []byte) {
		var b protocolpb.AdvertBody
		names := []string{"read:logs"}
		if proto.Unmarshal(body, &b) == nil && len(b.Actions) > 0 {
			names = names[:0]
			for _, a := range b.Actions {
				names = append(names, a.Scope)
			}
		}
		digest := sha256.Sum256(body)
		rec, err := NewRecordAdvertising(id, cred, nil, 1, time.Second, now, names, digest)
		if err != nil {
			return // names a record may not carry: refused before any advertisement
		}
		ad := &protocolpb.Advert{Body: body, Signature: id.Sign(wire.DomainAdvert, body)}
		got, err := VerifyAdvert(ad, rec)
		if err != nil {
			if trust.CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(got.Actions) != len(names) || got.Digest != digest {
			t.Fatalf("verified %d actions against %d names", len(got.Actions), len(names))
		}
		for i, a := range got.Actions {
			if a.Scope != names[i] {
				t.Fatalf("action %d is %q, the record names %q", i, a.Scope, names[i])
			}
			if err := CheckAction(a); err != nil {
				t.Fatalf("verified an action that does not check: %v", err)
			}
		}
	})
}
