package refused

import (
	"errors"
	"fmt"
	"testing"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

func refusal(code trust.Code) *trust.Error { return &trust.Error{Code: code, Link: -1, Detail: "test"} }

// Only final verdicts are kept, and Get returns the very error added;
// verdicts that may turn into acceptance, and errors that are not
// *trust.Error, are not kept.
func TestAddKeepsFinalVerdictsOnly(t *testing.T) {
	for _, tc := range []struct {
		err  error
		kept bool
	}{
		{refusal(trust.CodeBadSignature), true},
		{refusal(trust.CodeExpired), true},
		{refusal(trust.CodeUntrustedRoot), true},
		{refusal(trust.CodeMalformed), true},
		{refusal(trust.CodeRevoked), true},
		{refusal(protocol.CodeReplay), true},
		{refusal(protocol.CodeImpersonation), true},
		{refusal(trust.CodeNotYetValid), false},
		{refusal(protocol.CodeStale), false},
		{refusal(protocol.CodeUnlisted), false},
		{refusal(trust.CodeFull), false},
		{refusal(protocol.CodeDead), false},
		{refusal(""), false},
		{errors.New("plain"), false},
		{fmt.Errorf("wrapped: %w", refusal(trust.CodeBadSignature)), false},
		{nil, false},
	} {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			c := New()
			k := Key("record", []byte("bytes"))
			c.Add(k, tc.err)
			got := c.Get(k)
			if tc.kept && got != tc.err {
				t.Fatalf("Get = %v, want the error added", got)
			}
			if !tc.kept && got != nil {
				t.Fatalf("kept a verdict that is not final: %v", got)
			}
		})
	}
}

// The first final verdict of a key stays: a later one does not replace it.
func TestFirstVerdictStays(t *testing.T) {
	c := New()
	k := Key("leave", []byte("x"))
	first, second := refusal(trust.CodeBadSignature), refusal(trust.CodeExpired)
	c.Add(k, first)
	c.Add(k, second)
	if got := c.Get(k); got != first {
		t.Fatalf("Get = %v, want the first verdict", got)
	}
	if len(c.ring) != 1 {
		t.Fatalf("ring holds %d keys for one", len(c.ring))
	}
}

// Key separates kinds and bytes: the same bytes under another kind, or
// other bytes, are another key; the same input is the same key.
func TestKey(t *testing.T) {
	base := Key("record", []byte("abc"))
	if Key("record", []byte("abc")) != base {
		t.Fatal("Key is not a function of its input")
	}
	for name, k := range map[string][32]byte{
		"other kind":     Key("leave", []byte("abc")),
		"other bytes":    Key("record", []byte("abd")),
		"kind into data": Key("recor", []byte("dabc")),
		"empty":          Key("record"),
	} {
		if k == base {
			t.Errorf("%s: same key as the base", name)
		}
	}
}

// Past maxRefusals the oldest keys are forgotten first, one for each new
// key, and the map never holds more than the bound.
func TestBoundForgetsOldest(t *testing.T) {
	c := New()
	key := func(i int) [32]byte { return Key("t", []byte(fmt.Sprint(i))) }
	bad := refusal(trust.CodeBadSignature)
	for i := range maxRefusals + 3 {
		c.Add(key(i), bad)
	}
	if len(c.m) != maxRefusals || len(c.ring) != maxRefusals {
		t.Fatalf("holds %d (ring %d), want %d", len(c.m), len(c.ring), maxRefusals)
	}
	for i := range 3 {
		if c.Get(key(i)) != nil {
			t.Fatalf("key %d, among the oldest, still held", i)
		}
	}
	for _, i := range []int{3, maxRefusals, maxRefusals + 2} {
		if c.Get(key(i)) == nil {
			t.Fatalf("key %d forgotten too early", i)
		}
	}
}
