package trust

import (
	"testing"
	"time"
)

// The cost of taking keys and tokens off the wire: every envelope pays it.
// go test ./trust -run X -bench . -benchmem

func BenchmarkPublicKeyFromBytes(b *testing.B) {
	k := testIdentity(b, 1).Public()
	for b.Loop() {
		if _, err := PublicKeyFromBytes(k[:]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParsePublicKey decodes the point too (operator input only).
func BenchmarkParsePublicKey(b *testing.B) {
	s := testIdentity(b, 1).Public().String()
	for b.Loop() {
		if _, err := ParsePublicKey(s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseTokenDepth5 decodes a five-link chain: keys checked, link
// IDs derived, nothing verified.
func BenchmarkParseTokenDepth5(b *testing.B) {
	a := testAnchor(b, 1)
	ids := []*Identity{testIdentity(b, 2), testIdentity(b, 3), testIdentity(b, 4), testIdentity(b, 5), testIdentity(b, 6)}
	g := Grant{Scopes: []string{"read:logs"}, Delegatable: []string{"read:logs"}, Expires: t0.Add(time.Hour)}
	tok, err := IssueToken(a, ids[0].Public(), g, t0)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i < len(ids); i++ {
		if tok, err = tok.Delegate(ids[i-1], ids[i].Public(), g, t0); err != nil {
			b.Fatal(err)
		}
	}
	raw := tok.Bytes()
	for b.Loop() {
		if _, err := ParseToken(raw, DefaultMaxTokenSize); err != nil {
			b.Fatal(err)
		}
	}
}
