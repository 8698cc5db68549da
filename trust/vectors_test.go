package trust

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust/trustpb"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json and the fuzz seed corpora")

// vector is a pinned encoded object and the decision expected for it. The
// file is written once (go test ./trust -run TestVectors -update) and then
// only read, so that a change of wire format or of a rule shows as a
// failing test instead of drifting silently.
type vector struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"` // token or credential
	Hex    string `json:"hex"`
	Anchor string `json:"anchor"`
	Holder string `json:"holder,omitempty"`
	Action string `json:"action,omitempty"`
	At     string `json:"at"`
	Want   Code   `json:"want"`
	// LinkIDs are the derived IDs of a token's links (LinkID), pinned so
	// that the derivation, which revocations name, cannot drift.
	LinkIDs []string `json:"link_ids,omitempty"`
}

func makeVectors(t *testing.T) []vector {
	f := newFixture(t)
	a := f.anchor.Public().String()
	cred, _ := IssueCredential(f.anchor, f.alice.Public(), "alice", t0, DefaultCredentialTTL)
	at := func(d time.Duration) string { return t0.Add(d).Format(time.RFC3339) }
	tok := func(x *Token) string { return hex.EncodeToString(x.Bytes()) }
	vs := []vector{
		{"depth-1 valid", "token", tok(f.root), a, f.alice.Public().String(), "write:reports", at(time.Minute), "", nil},
		{"depth-3 valid", "token", tok(f.toCar), a, f.carol.Public().String(), "read:logs", at(time.Minute), "", nil},
		{"depth-3 wrong holder", "token", tok(f.toCar), a, f.mallory.Public().String(), "read:logs", at(time.Minute), CodeNotHolder, nil},
		{"depth-3 scope not granted", "token", tok(f.toCar), a, f.carol.Public().String(), "read:metrics", at(time.Minute), CodeScopeNotGranted, nil},
		{"depth-3 expired", "token", tok(f.toCar), a, f.carol.Public().String(), "read:logs", at(time.Hour), CodeExpired, nil},
		{"depth-3 not yet valid", "token", tok(f.toCar), a, f.carol.Public().String(), "read:logs", at(-time.Hour), CodeNotYetValid, nil},
		{"depth-3 untrusted root", "token", tok(f.toCar), f.mallory.Public().String(), f.carol.Public().String(), "read:logs", at(time.Minute), CodeUntrustedRoot, nil},
		{"credential valid", "credential", hex.EncodeToString(cred.Bytes()), a, "", "", at(time.Hour), "", nil},
		{"credential expired", "credential", hex.EncodeToString(cred.Bytes()), a, "", "", at(25 * time.Hour), CodeExpired, nil},
	}
	for i := range vs {
		if vs[i].Kind == "token" {
			tk, _ := ParseToken(mustHex(t, vs[i].Hex), DefaultMaxTokenSize)
			vs[i].LinkIDs = linkIDs(tk)
		}
	}
	return vs
}

func linkIDs(t *Token) []string {
	var ids []string
	for _, l := range t.Info().Links {
		ids = append(ids, l.ID)
	}
	return ids
}

func TestVectors(t *testing.T) {
	t.Parallel()
	path := filepath.Join("testdata", "vectors.json")
	if *update {
		vs := makeVectors(t)
		b, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		writeCorpus(t, "FuzzParseToken", "seed-valid", []byte(mustHex(t, vs[1].Hex)))
		writeCorpus(t, "FuzzParseCredential", "seed-valid", []byte(mustHex(t, vs[7].Hex)))
		writeRevocationSeeds(t)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 9 {
		t.Fatalf("only %d vectors", len(vs))
	}
	for _, vec := range vs {
		t.Run(vec.Name, func(t *testing.T) {
			t.Parallel()
			raw := mustHex(t, vec.Hex)
			anchor, err := ParsePublicKey(vec.Anchor)
			if err != nil {
				t.Fatal(err)
			}
			now, _ := time.Parse(time.RFC3339, vec.At)
			v := testVerifier(t, anchor)
			switch vec.Kind {
			case "token":
				tok, err := ParseToken(raw, DefaultMaxTokenSize)
				if err != nil {
					t.Fatal(err)
				}
				if string(tok.Bytes()) != string(raw) {
					t.Fatal("re-encoding differs from the pinned bytes")
				}
				if got := linkIDs(tok); strings.Join(got, " ") != strings.Join(vec.LinkIDs, " ") {
					t.Fatalf("derived link IDs %v, pinned %v", got, vec.LinkIDs)
				}
				holder, _ := ParsePublicKey(vec.Holder)
				wantCode(t, v.Authorize(tok, holder, vec.Action, now), vec.Want)
			case "credential":
				c, err := ParseCredential(raw)
				if err != nil {
					t.Fatal(err)
				}
				wantCode(t, v.VerifyCredential(c, now), vec.Want)
			}
		})
	}
}

func mustHex(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeRevocationSeeds writes a revocation of each kind, and a version 1
// one (refused), as seeds of FuzzParseRevocation.
func writeRevocationSeeds(t *testing.T) {
	f := newFixture(t)
	r, _ := RevokeAgent(f.anchor, f.bob.Public(), t0, t0, time.Hour)
	writeCorpus(t, "FuzzParseRevocation", "seed-valid", r.Bytes())
	r, _ = RevokeLink(f.anchor, f.toCar.Links[1].ID, t0, time.Hour)
	writeCorpus(t, "FuzzParseRevocation", "seed-link", r.Bytes())
	r, _ = RevokeCredential(f.anchor, [16]byte{0x5e, 0x71, 0xa1}, t0, time.Hour)
	writeCorpus(t, "FuzzParseRevocation", "seed-credential", r.Bytes())
	iss := f.anchor.Public()
	id := f.toCar.Links[1].ID
	body, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.RevocationBody{Version: 1, Issuer: iss[:], LinkId: id[:],
		IssuedAt: t0.Unix(), KeepUntil: t0.Add(time.Hour).Unix(), Id: make([]byte, 16)})
	v1, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&trustpb.Signed{Body: body, Signature: f.anchor.kp.sign(DomainRevocation, body)})
	writeCorpus(t, "FuzzParseRevocation", "seed-v1", v1)
}

// writeCorpus writes one seed in the go test fuzz v1 format.
func writeCorpus(t *testing.T, fuzzName, name string, seed []byte) {
	dir := filepath.Join("testdata", "fuzz", fuzzName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seed)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
