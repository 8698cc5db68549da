package discovery

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"
	"unsafe"

	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
)

// advertising returns agent i's record naming names, through the wire.
func (f *fx) advertising(t testing.TB, i int, seq uint64, names []string) *Record {
	t.Helper()
	addrs := []ma.Multiaddr{ma.StringCast("/ip4/10.0.0.1/tcp/4001"), ma.StringCast("/ip4/10.0.0.1/udp/4001/quic-v1")}
	r, err := NewRecordAdvertising(f.agents[i], f.creds[i], addrs, seq, hb, t0, names, [32]byte{byte(i), byte(seq)})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(r.Proto())
	var a protocolpb.Announcement
	if err := proto.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	p, err := ParseRecord(&a)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sameAs fails t unless held reads back exactly as rec: its wire form
// byte for byte, names, digest, addresses and credential.
func sameAs(t *testing.T, held, rec *Record) {
	t.Helper()
	hp, rp := held.Proto(), rec.Proto()
	if !bytes.Equal(hp.Body, rp.Body) || !bytes.Equal(hp.Signature, rp.Signature) {
		t.Fatal("the record held does not encode as the record received")
	}
	if !slices.Equal(held.Actions(), rec.Actions()) {
		t.Fatalf("names %v, want %v", held.Actions(), rec.Actions())
	}
	hd, hok := held.AdvertDigest()
	rd, rok := rec.AdvertDigest()
	if hd != rd || hok != rok {
		t.Fatalf("digest %x %v, want %x %v", hd, hok, rd, rok)
	}
	if fmt.Sprint(held.Addrs()) != fmt.Sprint(rec.Addrs()) || !held.Credential.Equal(rec.Credential) || held.Credential.Name != rec.Credential.Name {
		t.Fatalf("addresses %v or credential differ from %v", held.Addrs(), rec.Addrs())
	}
	if held.Seq != rec.Seq || !held.Timestamp.Equal(rec.Timestamp) || held.Interval != rec.Interval || !held.Agent.Equal(rec.Agent) {
		t.Fatal("fields differ")
	}
}

// Agents that advertise the same actions share one copy of their names in
// a registry; what the registry holds reads back and re-encodes exactly as
// received, and the copy goes when the last record naming it does.
func TestRegistrySharesNames(t *testing.T) {
	t.Parallel()
	f := newFx(t, 3)
	r := f.registry()
	same := []string{"call:tool-a", "read:logs", "write:x"}
	other := []string{"read:logs"}
	recs := []*Record{f.advertising(t, 0, 1, same), f.advertising(t, 1, 1, same), f.advertising(t, 2, 1, other)}
	for _, rec := range recs {
		if _, err := r.Announce(rec, Direct, t0); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.SharedNames(); n != 2 {
		t.Fatalf("%d runs of names held, want 2", n)
	}
	for _, rec := range recs {
		held := r.Record(rec.Agent)
		if held.names == "" {
			t.Fatalf("the names of %s are not kept apart", rec.Credential.Name)
		}
		sameAs(t, held, rec)
		if !r.Holds(rec.Proto()) {
			t.Fatal("Holds does not know the record it holds")
		}
		// The same record again is no news; one that differs in its
		// names only is a replay.
		if evs, err := r.Announce(rec, Direct, t0); err != nil || len(evs) != 0 {
			t.Fatalf("same record again: %v %v", evs, err)
		}
	}
	if a, b := r.Record(recs[0].Agent).names, r.Record(recs[1].Agent).names; !sameString(a, b) {
		t.Fatal("two agents advertising the same actions do not share their names")
	}
	altered := f.advertising(t, 0, 1, other)
	if _, err := r.Announce(altered, Direct, t0); trust.CodeOf(err) != protocol.CodeReplay {
		t.Fatalf("same seq, other names: %v", err)
	}
	if r.Holds(altered.Proto()) {
		t.Fatal("Holds takes a record with other names for the one held")
	}
	// A newer record with other names moves agent 0 to the other run.
	next := f.advertising(t, 0, 2, other)
	if _, err := r.Announce(next, Direct, t0); err != nil {
		t.Fatal(err)
	}
	sameAs(t, r.Record(next.Agent), next)
	if n := r.SharedNames(); n != 2 {
		t.Fatalf("%d runs of names held after a change, want 2", n)
	}
	// A record naming nothing keeps nothing apart.
	if _, err := r.Announce(f.record(t, 1, 3, t0), Direct, t0); err != nil {
		t.Fatal(err)
	}
	if n := r.SharedNames(); n != 1 {
		t.Fatalf("%d runs of names held after agent 1 stopped advertising, want 1", n)
	}
	// Expired credentials remove the agents and the last names with them.
	r.Tick(t0.Add(48 * time.Hour))
	if r.Len() != 0 || r.SharedNames() != 0 {
		t.Fatalf("%d agents and %d runs of names left", r.Len(), r.SharedNames())
	}
}

// sameString reports whether a and b are the same bytes in memory.
func sameString(a, b string) bool {
	return len(a) > 0 && len(a) == len(b) && unsafe.StringData(a) == unsafe.StringData(b)
}

// A record whose names are not one canonical run (fields out of order, a
// long length encoding) verifies as before and is kept whole, byte for
// byte: sharing never changes what a record says or re-encodes to.
func TestRegistryKeepsOddNamesWhole(t *testing.T) {
	t.Parallel()
	f := newFx(t, 1)
	id, cred := f.agents[0], f.creds[0]
	digest := bytes.Repeat([]byte{7}, 32)
	name := func(b []byte, s string) []byte {
		b = protowire.AppendTag(b, 8, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	head := func(seq uint64) []byte {
		var b []byte
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(protocol.Version))
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		pk := id.Public()
		b = protowire.AppendBytes(b, pk[:])
		cb, _ := proto.Marshal(cred.Proto())
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, cb)
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, seq)
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(hb.Milliseconds()))
		b = protowire.AppendTag(b, 7, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(t0.UnixNano()))
	}
	digestField := func(b []byte) []byte {
		b = protowire.AppendTag(b, 9, protowire.BytesType)
		return protowire.AppendBytes(b, digest)
	}
	bodies := map[string][]byte{
		// the digest between two names: two runs
		"two runs": name(digestField(name(head(1), "read:a")), "read:b"),
		// a name's length as a two-byte varint
		"long length": digestField(append(protowire.AppendTag(head(2), 8, protowire.BytesType), 0x86, 0x00, 'r', 'e', 'a', 'd', ':', 'a')),
		// the digest first, then the names: one run, shared
		"digest first": name(name(digestField(head(3)), "read:a"), "read:b"),
	}
	r := f.registry()
	for _, what := range []string{"two runs", "long length", "digest first"} {
		body := bodies[what]
		a := &protocolpb.Announcement{Body: body, Signature: id.Sign(DomainAnnounce, body)}
		rec, err := ParseRecord(a)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if _, err := r.Announce(rec, Direct, t0); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		held := r.Record(rec.Agent)
		if (held.names != "") != (what == "digest first") {
			t.Fatalf("%s: names kept apart: %v", what, held.names != "")
		}
		sameAs(t, held, rec)
		if !bytes.Equal(held.Proto().Body, body) || !r.Holds(a) {
			t.Fatalf("%s: the record held does not encode as signed", what)
		}
		if _, err := ParseRecord(held.Proto()); err != nil {
			t.Fatalf("%s: the record held does not parse again: %v", what, err)
		}
	}
}
