package discovery

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

func advertAgent(t testing.TB) (*trust.Identity, *trust.Credential) {
	t.Helper()
	anchor, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := trust.IssueCredential(anchor, id.Public(), "a", time.Now().Add(-time.Minute), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return id, cred
}

// A record names the advertised actions under its signature; an
// advertisement verifies only against the record whose digest it has,
// signed by that record's agent, naming exactly its actions.
func TestAdvertAgainstRecord(t *testing.T) {
	id, cred := advertAgent(t)
	acts := []Action{{Scope: "write:x", Description: "x"}, {Scope: "read:logs", InputSchema: json.RawMessage(`{"type":"object"}`)}}
	ad, digest, names, err := SignAdvert(id, acts)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != "[read:logs write:x]" {
		t.Fatalf("names %v", names)
	}
	rec, err := NewRecordAdvertising(id, cred, nil, 1, time.Second, time.Now(), names, digest)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyAdvert(ad, rec)
	if err != nil || len(got.Actions) != 2 || got.Actions[1].Description != "x" {
		t.Fatalf("%+v %v", got, err)
	}
	// The record's names and digest are covered by its signature.
	for name, edit := range map[string]func(b *protocolpb.AnnouncementBody){
		"names":  func(b *protocolpb.AnnouncementBody) { b.Actions[0] = "admin:all" },
		"digest": func(b *protocolpb.AnnouncementBody) { b.AdvertDigest[0] ^= 1 },
	} {
		var b protocolpb.AnnouncementBody
		a := rec.Proto()
		_ = proto.Unmarshal(a.Body, &b)
		edit(&b)
		body, _ := proto.Marshal(&b)
		if _, err := ParseRecord(&protocolpb.Announcement{Body: body, Signature: a.Signature}); trust.CodeOf(err) != trust.CodeBadSignature {
			t.Fatalf("altered %s: %v", name, err)
		}
	}
	// Names out of order, twice, not scopes, or a digest without names.
	for name, c := range map[string]struct {
		names  []string
		digest []byte
	}{
		"unsorted":  {[]string{"write:x", "read:logs"}, digest[:]},
		"twice":     {[]string{"read:logs", "read:logs"}, digest[:]},
		"wildcard":  {[]string{"read:*"}, digest[:]},
		"no digest": {[]string{"read:logs"}, nil},
		"no names":  {nil, digest[:]},
	} {
		if err := checkActions(id.Public(), c.names, c.digest); err == nil {
			t.Fatalf("%s: accepted", name)
		}
	}
	// Another advertisement of the same agent, or another agent's.
	other, _, _, _ := SignAdvert(id, acts[:1])
	if _, err := VerifyAdvert(other, rec); trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("another advertisement: %v", err)
	}
	forged := &protocolpb.Advert{Body: ad.Body, Signature: make([]byte, 64)}
	if _, err := VerifyAdvert(forged, rec); trust.CodeOf(err) != trust.CodeBadSignature {
		t.Fatalf("forged signature: %v", err)
	}
	// Bounds when signing.
	var many []Action
	for i := range MaxActions + 1 {
		many = append(many, Action{Scope: fmt.Sprintf("do:a%d", i)})
	}
	if _, _, _, err := SignAdvert(id, many); trust.CodeOf(err) != trust.CodeTooLarge {
		t.Fatalf("%d actions: %v", len(many), err)
	}
	var big []Action // each schema under MaxSchema, the whole over MaxAdvertSize
	for i := range 8 {
		big = append(big, Action{Scope: fmt.Sprintf("do:a%d", i), InputSchema: json.RawMessage(`{"d":"` + strings.Repeat("a", MaxSchema-16) + `"}`)})
	}
	if _, _, _, err := SignAdvert(id, big); trust.CodeOf(err) != trust.CodeTooLarge {
		t.Fatalf("a large advertisement: %v", err)
	}
}
