package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"google.golang.org/protobuf/proto"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func seed(b byte) *bytes.Reader { return bytes.NewReader(bytes.Repeat([]byte{b}, 32)) }

type world struct {
	anchor         *trust.AnchorKey
	alice, bob     *trust.Identity // alice calls bob
	mallory        *trust.Identity // a member with her own token
	aliceTok, mTok *trust.Token
	bobDecider     *Decider
}

func newWorld(t testing.TB) *world {
	w := &world{}
	w.anchor, _ = trust.GenerateAnchorKey(seed(1))
	w.alice, _ = trust.GenerateIdentity(seed(2))
	w.bob, _ = trust.GenerateIdentity(seed(3))
	w.mallory, _ = trust.GenerateIdentity(seed(4))
	var err error
	w.aliceTok, err = trust.IssueToken(w.anchor, w.alice.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: t0.Add(time.Hour)}, t0)
	if err != nil {
		t.Fatal(err)
	}
	w.mTok, _ = trust.IssueToken(w.anchor, w.mallory.Public(), trust.Grant{Scopes: []string{"read:metrics"}, Expires: t0.Add(time.Hour)}, t0)
	v, err := trust.NewVerifier(trust.DefaultPolicy(w.anchor.Public()))
	if err != nil {
		t.Fatal(err)
	}
	w.bobDecider = &Decider{Verifier: v, Replay: NewReplayGuard(0, 0, 0)}
	return w
}

func (w *world) request(t testing.TB, from *trust.Identity, tok *trust.Token, action string, at time.Time) []byte {
	t.Helper()
	raw, err := Seal(from, &Envelope{Kind: KindRequest, RecipientPeer: w.bob.Public(), Action: action, Payload: []byte(`{"q":1}`), Token: tok}, at)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (w *world) expect(from *trust.Identity) Expect {
	return Expect{Kinds: []Kind{KindRequest}, Peer: w.bob.Public(), From: from.Public()}
}

// mutate re-encodes raw with its body changed, keeping the old signature
// unless signer is given.
func mutate(t testing.TB, raw []byte, f func(*protocolpb.EnvelopeBody), signer *trust.Identity) []byte {
	t.Helper()
	var w protocolpb.Envelope
	if err := proto.Unmarshal(raw, &w); err != nil {
		t.Fatal(err)
	}
	var b protocolpb.EnvelopeBody
	if err := proto.Unmarshal(w.Body, &b); err != nil {
		t.Fatal(err)
	}
	f(&b)
	w.Body, _ = proto.Marshal(&b)
	if signer != nil {
		w.Signature = signer.Sign(DomainEnvelope, w.Body)
	}
	out, _ := proto.Marshal(&w)
	return out
}

func code(err error) trust.Code { return trust.CodeOf(err) }

func TestDecideAccepts(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	raw := w.request(t, w.alice, w.aliceTok, "read:logs", t0)
	e, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if e.Action != "read:logs" || !e.Sender.Equal(w.alice.Public()) || string(e.Payload) != `{"q":1}` {
		t.Fatalf("decoded envelope: %+v", e)
	}
	if w.bobDecider.Replay.Len() != 1 {
		t.Fatal("nonce not recorded")
	}
	// A reply needs no token and keeps the correlation ID.
	reply, _ := Seal(w.bob, &Envelope{Kind: KindReply, RecipientPeer: w.alice.Public(), Action: e.Action, CorrelationID: e.CorrelationID}, t0)
	aliceDecider := &Decider{Verifier: w.bobDecider.Verifier, Replay: NewReplayGuard(0, 0, 0)}
	r, err := aliceDecider.Decide(reply, Expect{Kinds: []Kind{KindReply, KindError}, Peer: w.alice.Public(), From: w.bob.Public()}, t0)
	if err != nil || r.CorrelationID != e.CorrelationID {
		t.Fatalf("reply: %v", err)
	}
}

func TestDecideRejects(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	now := t0.Add(time.Second)
	good := func() []byte { return w.request(t, w.alice, w.aliceTok, "read:logs", t0) }
	cases := []struct {
		name string
		raw  []byte
		x    Expect
		code trust.Code
	}{
		{"forged signature", mutate(t, good(), func(*protocolpb.EnvelopeBody) {}, w.mallory), w.expect(w.alice), trust.CodeBadSignature},
		{"altered body", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Payload = []byte(`{"q":2}`) }, nil), w.expect(w.alice), trust.CodeBadSignature},
		{"altered action", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Action = "write:logs" }, nil), w.expect(w.alice), trust.CodeBadSignature},
		{"altered timestamp", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Timestamp += 1000 }, nil), w.expect(w.alice), trust.CodeBadSignature},
		{"altered sender", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { k := w.mallory.Public(); b.Sender = k[:] }, nil), Expect{Kinds: []Kind{KindRequest}, Peer: w.bob.Public()}, trust.CodeBadSignature},
		{"claims another's ID", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { k := w.alice.Public(); b.Sender = k[:] }, w.mallory), w.expect(w.mallory), CodeImpersonation},
		{"stolen token", w.request(t, w.mallory, w.aliceTok, "read:logs", t0), w.expect(w.mallory), trust.CodeNotHolder},
		{"scope not granted", w.request(t, w.mallory, w.mTok, "read:logs", t0), w.expect(w.mallory), trust.CodeScopeNotGranted},
		{"no token", w.request(t, w.alice, nil, "read:logs", t0), w.expect(w.alice), CodeNoToken},
		{"stale", w.request(t, w.alice, w.aliceTok, "read:logs", t0.Add(-6*time.Minute)), w.expect(w.alice), CodeStale},
		{"future", w.request(t, w.alice, w.aliceTok, "read:logs", t0.Add(6*time.Minute)), w.expect(w.alice), CodeStale},
		{"wrong recipient", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { k := w.mallory.Public(); b.RecipientPeer = k[:] }, w.alice), w.expect(w.alice), CodeWrongRecipient},
		{"wrong kind", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Kind = protocolpb.Kind_KIND_REPLY }, w.alice), w.expect(w.alice), CodeWrongKind},
		{"topic where peer expected", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.RecipientPeer = nil; b.RecipientTopic = "x" }, w.alice), w.expect(w.alice), CodeWrongRecipient},
		{"version", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Version = 9 }, w.alice), w.expect(w.alice), CodeVersion},
		// A message on topic payments signed for read:logs, which the token
		// grants: the topic is not granted.
		{"message on a topic its action does not name", mutate(t, good(), func(b *protocolpb.EnvelopeBody) {
			b.Kind, b.RecipientPeer, b.RecipientTopic = protocolpb.Kind_KIND_MESSAGE, nil, "payments"
		}, w.alice), Expect{Kinds: []Kind{KindMessage}, Topic: "payments", From: w.alice.Public()}, CodeTopicNotGranted},
		{"short nonce", mutate(t, good(), func(b *protocolpb.EnvelopeBody) { b.Nonce = b.Nonce[:8] }, w.alice), w.expect(w.alice), trust.CodeMalformed},
		{"garbage", []byte("\x0a\xff\xff\xff garbage"), w.expect(w.alice), trust.CodeMalformed},
		{"empty", nil, w.expect(w.alice), trust.CodeMalformed},
		{"oversized", make([]byte, DefaultMaxEnvelopeSize+1), w.expect(w.alice), trust.CodeTooLarge},
	}
	for _, c := range cases {
		// Serial: the cases share bobDecider, whose replay guard must
		// stay empty after all of them.
		t.Run(c.name, func(t *testing.T) {
			_, err := w.bobDecider.Decide(c.raw, c.x, now)
			if code(err) != c.code {
				t.Fatalf("want %s, got %v", c.code, err)
			}
		})
	}
	if n := w.bobDecider.Replay.Len(); n != 0 {
		t.Fatalf("rejected envelopes left %d nonces in the replay cache", n)
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	raw := w.request(t, w.alice, w.aliceTok, "read:logs", t0)
	if _, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0); err != nil {
		t.Fatal(err)
	}
	// Same envelope again, inside the window.
	if _, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0.Add(time.Minute)); !errors.Is(err, ErrReplay) {
		t.Fatalf("want replay, got %v", err)
	}
	// After the window: stale, and the nonce has been forgotten.
	if _, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0.Add(5*time.Minute+time.Second)); !errors.Is(err, ErrStale) {
		t.Fatalf("want stale, got %v", err)
	}
	fresh := w.request(t, w.alice, w.aliceTok, "read:logs", t0.Add(6*time.Minute))
	if _, err := w.bobDecider.Decide(fresh, w.expect(w.alice), t0.Add(6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := w.bobDecider.Replay.Len(); n != 1 {
		t.Fatalf("replay cache holds %d, want 1 (old nonce expired)", n)
	}
	// Re-sent by someone else (mallory forwards alice's envelope): the
	// authenticated peer is not the sender.
	if _, err := w.bobDecider.Decide(fresh, w.expect(w.mallory), t0.Add(6*time.Minute)); !errors.Is(err, ErrImpersonation) {
		t.Fatalf("want impersonation, got %v", err)
	}
}

type denyAll struct{}

func (denyAll) Admit(trust.PublicKey, time.Time) error {
	return Reject(CodeUnlisted, "not in the registry")
}
func (denyAll) AdmitHolder(trust.PublicKey, time.Time) error {
	return Reject(CodeDead, "dead")
}

func TestMembershipRunsBeforeSignature(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.bobDecider.Membership = denyAll{}
	raw := w.request(t, w.alice, w.aliceTok, "read:logs", t0)
	if _, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0); !errors.Is(err, ErrUnlisted) {
		t.Fatalf("want unlisted, got %v", err)
	}
}

func TestRevokedChainRejected(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	r, _ := trust.RevokeLink(w.anchor, w.aliceTok.Links[0].ID, t0, time.Hour)
	if err := w.bobDecider.Verifier.AddRevocation(r, t0); err != nil {
		t.Fatal(err)
	}
	raw := w.request(t, w.alice, w.aliceTok, "read:logs", t0)
	if _, err := w.bobDecider.Decide(raw, w.expect(w.alice), t0); code(err) != trust.CodeRevoked {
		t.Fatalf("want revoked, got %v", err)
	}
}
