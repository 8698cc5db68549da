package trust

import (
	"bytes"
	"testing"
	"time"
)

// The fuzz targets decode arbitrary bytes and then run the full checks on
// whatever decodes: nothing may panic, and anything that decodes must
// re-decode from its own encoding. Seeds live in testdata/fuzz/.

func FuzzParseToken(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	anchor := testAnchor(f, 1)
	holder := testIdentity(f, 2)
	v := testVerifier(f, anchor.Public())
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := ParseToken(data, DefaultMaxTokenSize)
		if err != nil {
			if CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		_ = v.Authorize(tok, holder.Public(), "read:logs", t0)
		again, err := ParseToken(tok.Bytes(), 1<<20)
		if err != nil || len(again.Links) != len(tok.Links) {
			t.Fatalf("re-encoded token does not decode: %v", err)
		}
		_ = tok.Info()
	})
}

func FuzzParseCredential(f *testing.F) {
	f.Add([]byte{})
	anchor := testAnchor(f, 1)
	v := testVerifier(f, anchor.Public())
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredential(data)
		if err != nil {
			if CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		_ = v.VerifyCredential(c, t0)
		if _, err := ParseCredential(c.Bytes()); err != nil && !bytes.Equal(c.Bytes(), data) {
			t.Fatalf("re-encoded credential does not decode: %v", err)
		}
	})
}

func FuzzParseRevocation(f *testing.F) {
	f.Add([]byte{})
	anchor := testAnchor(f, 20)
	v := testVerifier(f, anchor.Public())
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRevocation(data)
		if err != nil {
			if CodeOf(err) == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		_ = v.AddRevocation(r, t0.Add(time.Minute))
		again, err := ParseRevocation(r.Bytes())
		if err != nil || again.LinkID != r.LinkID || again.Serial != r.Serial || again.Agent != r.Agent {
			t.Fatalf("re-encoded revocation does not decode the same: %v", err)
		}
	})
}
