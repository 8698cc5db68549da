package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// The token inspector takes whatever is pasted: any token text, holder and
// action give a one-line verdict, never a panic, and the page that shows
// them holds no markup of theirs (its one script element is its own).
// Seeds in testdata/fuzz/FuzzConsoleInspect.
func FuzzConsoleInspect(f *testing.F) {
	anchor, err := trust.GenerateAnchorKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	holder, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	tok, err := trust.IssueToken(anchor, holder.Public(), trust.Grant{Scopes: []string{"read:logs"}, Expires: now.Add(time.Hour)}, now)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(trust.EncodePEM(tok.Bytes(), trust.PEMToken)), "", "read:logs")
	f.Add(hex.EncodeToString(tok.Bytes()), holder.Public().String(), "")
	f.Add("-----BEGIN MESHAGENT TOKEN-----\n<script>x</script>\n-----END MESHAGENT TOKEN-----", "<b>", `"><script>`)
	p := trust.DefaultPolicy()
	p.Anchors = []trust.PublicKey{anchor.Public()}
	revs, err := newConsoleRevocations(p)
	if err != nil {
		f.Fatal(err)
	}
	c := &consoleServer{revs: revs}
	f.Fuzz(func(t *testing.T, token, holder, action string) {
		in := inspectForm{Token: token, Holder: holder, Action: action}
		ins := c.inspect(in, map[string]string{}, now)
		if ins.Verdict == "" || strings.Contains(ins.Verdict, "\n") || ins.Valid && (ins.Decoded == nil || ins.Verdict != "valid") {
			t.Fatalf("verdict %+v", ins)
		}
		var page bytes.Buffer
		if err := consoleTemplate.Execute(&page, &consolePage{Form: in, Inspection: ins}); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(strings.ToLower(page.String()), "<script"); n != 1 {
			t.Fatalf("%d script elements on the page", n)
		}
	})
}
