package protocol

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/trust/trustpb"
	"github.com/meshagent/meshagent/wire"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestOpenViewMatchesBody: the decode-only view has EnvelopeBody's fields,
// numbers and kinds, the token (12) as repeated bytes.
func TestOpenViewMatchesBody(t *testing.T) {
	t.Parallel()
	body := (&protocolpb.EnvelopeBody{}).ProtoReflect().Descriptor().Fields()
	view := (&protocolpb.EnvelopeBodyOpen{}).ProtoReflect().Descriptor().Fields()
	if body.Len() != view.Len() {
		t.Fatalf("EnvelopeBody has %d fields, the view %d", body.Len(), view.Len())
	}
	for i := 0; i < body.Len(); i++ {
		b := body.Get(i)
		v := view.ByNumber(b.Number())
		if v == nil || v.Name() != b.Name() {
			t.Fatalf("field %d (%s) missing from the view", b.Number(), b.Name())
		}
		if b.Number() == 12 {
			if b.Kind() != protoreflect.MessageKind || v.Kind() != protoreflect.BytesKind || !v.IsList() {
				t.Fatalf("token: %v / %v", b.Kind(), v.Kind())
			}
			continue
		}
		if v.Kind() != b.Kind() || v.Cardinality() != b.Cardinality() {
			t.Fatalf("field %s: %v %v, view %v %v", b.Name(), b.Kind(), b.Cardinality(), v.Kind(), v.Cardinality())
		}
	}
}

// openReference is Open as it was before the view: the body decoded in
// full, the token from its decoded message.
func openReference(raw []byte) (*Envelope, error) {
	var w protocolpb.Envelope
	if err := proto.Unmarshal(raw, &w); err != nil {
		return nil, err
	}
	var b protocolpb.EnvelopeBody
	if err := proto.Unmarshal(w.Body, &b); err != nil {
		return nil, err
	}
	e, err := Open(raw, 1<<20, 1<<20)
	if err != nil {
		return nil, err
	}
	// Open checked everything else; compare its token with the merged one.
	e.Token = nil
	if b.Token != nil {
		if e.Token, err = trust.TokenFromProto(b.Token); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// FuzzOpenMatchesFullDecode: whatever the bytes, splitEnvelope reads the
// envelope as proto.Unmarshal does, the view decodes the token exactly as
// decoding the whole body did (a token field given several times
// included), and Decide's cached decoder as Open's.
func FuzzOpenMatchesFullDecode(f *testing.F) {
	w := newWorld(f)
	valid := w.request(f, w.alice, w.aliceTok, "read:logs", t0)
	f.Add(valid)
	f.Add(twoTokenFields(f, valid, w.alice))
	f.Add([]byte{})
	// Unknown fields, a group, a field of another wire type, a field twice.
	f.Add(append(append([]byte(nil), valid...), 0x18, 0x01, 0x23, 0x08, 0x01, 0x24, 0x08, 0x05, 0x12, 0x01, 0x00))
	f.Add(append([]byte{0x0a, 0x01, 0x00}, valid...))
	f.Add([]byte{0x0c})
	d := w.bobDecider
	f.Fuzz(func(t *testing.T, data []byte) {
		var outer protocolpb.Envelope
		perr := proto.Unmarshal(data, &outer)
		body, sig, ok := splitEnvelope(data)
		if ok != (perr == nil) || ok && (!bytes.Equal(body, outer.Body) || !bytes.Equal(sig, outer.Signature)) {
			t.Fatalf("splitEnvelope: %v %x %x; proto.Unmarshal: %v %x %x", ok, body, sig, perr, outer.Body, outer.Signature)
		}
		if perr == nil {
			var want, mine protocolpb.EnvelopeBodyOpen
			werr := proto.Unmarshal(outer.Body, &want)
			if ok := readBody(outer.Body, &mine); ok != (werr == nil) {
				t.Fatalf("readBody: %v; proto.Unmarshal: %v", ok, werr)
			}
			want.ProtoReflect().SetUnknown(nil)
			if werr == nil && !proto.Equal(&want, &mine) {
				t.Fatalf("readBody: %v; proto.Unmarshal: %v", &mine, &want)
			}
		}
		got, gerr := Open(data, 1<<20, 1<<20)
		cached, cerr := open(data, 1<<20, d.Verifier.DecodeToken)
		ref, rerr := openReference(data)
		if (gerr == nil) != (cerr == nil) {
			t.Fatalf("Open: %v; with the verifier's decoder: %v", gerr, cerr)
		}
		if gerr != nil {
			return
		}
		if rerr != nil {
			t.Fatalf("the view accepted what the full decode refuses: %v", rerr)
		}
		for _, e := range []*Envelope{cached, ref} {
			if (got.Token == nil) != (e.Token == nil) || got.Token != nil && !bytes.Equal(got.Token.Bytes(), e.Token.Bytes()) {
				t.Fatal("tokens differ")
			}
			if got.Action != e.Action || !bytes.Equal(got.body, e.body) || !bytes.Equal(got.sig, e.sig) || got.Sender != e.Sender {
				t.Fatal("envelopes differ")
			}
		}
	})
}

// twoTokenFields re-signs raw with its token field split in two
// occurrences (anchor in the first, links in the second): protobuf merges
// them into the one token.
func twoTokenFields(t testing.TB, raw []byte, signer *trust.Identity) []byte {
	t.Helper()
	var w protocolpb.Envelope
	if err := proto.Unmarshal(raw, &w); err != nil {
		t.Fatal(err)
	}
	var b protocolpb.EnvelopeBody
	if err := proto.Unmarshal(w.Body, &b); err != nil {
		t.Fatal(err)
	}
	tok := b.Token
	b.Token = nil
	body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&b)
	part1, _ := proto.Marshal(&trustpb.Token{Version: tok.Version, Anchor: tok.Anchor})
	part2, _ := proto.Marshal(&trustpb.Token{Links: tok.Links})
	body = protowire.AppendTag(body, 12, protowire.BytesType)
	body = protowire.AppendBytes(body, part1)
	body = protowire.AppendTag(body, 12, protowire.BytesType)
	body = protowire.AppendBytes(body, part2)
	sig := signer.Sign(wire.DomainEnvelope, body)
	out, _ := proto.Marshal(&protocolpb.Envelope{Body: body, Signature: sig})
	return out
}

func TestTwoTokenFieldsAreOneToken(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	raw := twoTokenFields(t, w.request(t, w.alice, w.aliceTok, "read:logs", t0), w.alice)
	e, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Token.Bytes(), w.aliceTok.Bytes()) {
		t.Fatal("merged token differs")
	}
}

func TestWriteOpenFuzzSeed(t *testing.T) {
	t.Parallel()
	if os.Getenv("MESHAGENT_UPDATE_CORPUS") == "" {
		t.Skip("set MESHAGENT_UPDATE_CORPUS=1 to rewrite testdata/fuzz/FuzzOpenMatchesFullDecode")
	}
	w := newWorld(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzOpenMatchesFullDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	valid := w.request(t, w.alice, w.aliceTok, "read:logs", t0)
	for name, seed := range map[string][]byte{"seed-valid": valid, "seed-two-token-fields": twoTokenFields(t, valid, w.alice)} {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadBodyMatchesProto: bodies that the fuzzer may take long to find.
func TestReadBodyMatchesProto(t *testing.T) {
	t.Parallel()
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	var cases [][]byte
	add := func(f func(b []byte) []byte) { cases = append(cases, f(nil)) }
	add(func(b []byte) []byte { // every field, twice, the second differing
		for _, v := range []uint64{1, 2} {
			for _, num := range []protowire.Number{1, 2, 9, 15} {
				b = protowire.AppendVarint(tag(b, num, protowire.VarintType), v)
			}
			for num := protowire.Number(3); num <= 17; num++ {
				if num != 9 && num != 15 {
					b = protowire.AppendBytes(tag(b, num, protowire.BytesType), []byte{byte(v), 'x'})
				}
			}
		}
		return b
	})
	add(func(b []byte) []byte { // a negative kind, a huge version
		b = protowire.AppendVarint(tag(b, 2, protowire.VarintType), uint64(1<<64-3))
		return protowire.AppendVarint(tag(b, 1, protowire.VarintType), 1<<40+1)
	})
	add(func(b []byte) []byte { return protowire.AppendBytes(tag(b, 6, protowire.BytesType), []byte{0xff}) }) // invalid UTF-8
	add(func(b []byte) []byte { return protowire.AppendVarint(tag(b, 6, protowire.VarintType), 7) })          // a string as a varint
	add(func(b []byte) []byte { return protowire.AppendBytes(tag(b, 1, protowire.BytesType), []byte("v")) })  // a varint as bytes
	add(func(b []byte) []byte { return protowire.AppendFixed64(tag(b, 12, protowire.Fixed64Type), 1) })       // the token as fixed64
	add(func(b []byte) []byte {
		return tag(protowire.AppendVarint(tag(b, 99, protowire.StartGroupType), 0), 99, protowire.EndGroupType)
	})
	add(func(b []byte) []byte { return tag(b, 99, protowire.StartGroupType) })                             // an unclosed group
	add(func(b []byte) []byte { return tag(b, 7, protowire.EndGroupType) })                                // a stray end
	add(func(b []byte) []byte { return append(tag(b, 7, protowire.BytesType), 5, 'a') })                   // truncated
	add(func(b []byte) []byte { return protowire.AppendVarint(b, uint64(protowire.MaxValidNumber+1)<<3) }) // a field number too large
	add(func(b []byte) []byte { return append(tag(b, 3, 6), 0) })                                          // wire type 6
	for i, body := range cases {
		var want, mine protocolpb.EnvelopeBodyOpen
		werr := proto.Unmarshal(body, &want)
		if ok := readBody(body, &mine); ok != (werr == nil) {
			t.Fatalf("case %d: readBody %v; proto.Unmarshal %v", i, ok, werr)
		}
		want.ProtoReflect().SetUnknown(nil)
		if werr == nil && !proto.Equal(&want, &mine) {
			t.Fatalf("case %d: readBody %v; proto.Unmarshal %v", i, &mine, &want)
		}
	}
}
