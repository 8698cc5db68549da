//go:build meshsim

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// The demo is the README's first command: every row must come out as it
// must, and it must say so.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := runDemo(ctx, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"rejected: bad_signature", "rejected: replay", "rejected: escalation", "rejected: not_holder", "rejected: untrusted_root", "rejected: no connection", "accepted: echo: hi", "rejected: no_token", "every row came out as it must"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "HANDLER RAN") {
		t.Fatal("a handler ran for a rejected call")
	}
}

// The demo takes no arguments: anything else is a one-line usage error.
func TestDemoTakesNoArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--fast"}, &out, &errb); code != 2 || out.Len() != 0 || strings.Count(errb.String(), "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}
