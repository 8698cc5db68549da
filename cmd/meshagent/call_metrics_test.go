//go:build meshsim

package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A call is timed on both sides, under its action and decision; the page
// says which build this is.
func TestCallDurationHistogram(t *testing.T) {
	a, b, _, bID := pair(t)
	admitted(t, a, bID, 20*time.Second)
	if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": pingAction, "timeout": "5s"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	// read:logs: alice holds a token for it, bob has no handler.
	if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": "read:logs", "timeout": "5s"}, io.Discard); err == nil {
		t.Fatal("read:logs answered without a handler")
	}
	pa, pb := scrape(t, a), scrape(t, b)
	for _, c := range []struct {
		page, side, action, decision string
	}{
		{pa, "caller", pingAction, "accept"},
		{pb, "handler", pingAction, "accept"},
		{pa, "caller", "read:logs", "no_handler"},
		{pb, "handler", "other", "no_handler"}, // bob neither handles read:logs nor holds it
	} {
		if got := metricSum(c.page, "meshagent_call_duration_seconds_count", `side="`+c.side+`"`, `action="`+c.action+`"`, `decision="`+c.decision+`"`); got != 1 {
			t.Errorf("%s %s %s: count %v, want 1", c.side, c.action, c.decision, got)
		}
	}
	if got := metricSum(pa, "meshagent_call_duration_seconds_bucket", `side="caller"`, `action="ping:agent"`, `le="+Inf"`); got != 1 {
		t.Errorf("+Inf bucket: %v", got)
	}
	info := fmt.Sprintf(`meshagent_build_info{goversion=%q,revision=%q,version=%q} 1`, runtime.Version(), revision, version)
	if !strings.Contains(pa, info) {
		t.Errorf("no %s on the page", info)
	}
	if metricSum(pa, "meshagent_replay_nonces_capacity") <= 0 {
		t.Error("no meshagent_replay_nonces_capacity")
	}
}

// Attack: a peer (and a local process) calls 300 actions made up on the
// spot. Neither daemon's /metrics gains a series per action: they are all
// counted as "other", on the caller's side and the handler's.
func TestCallDurationActionsBounded(t *testing.T) {
	a, b, _, bID := pair(t)
	admitted(t, a, bID, 20*time.Second)
	const calls = 300
	for i := range calls {
		action := fmt.Sprintf("made_up_%d:x", i)
		if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": action, "timeout": "5s"}, io.Discard); err == nil {
			t.Fatalf("%s answered", action)
		}
	}
	pa, pb := scrape(t, a), scrape(t, b)
	series := func(p string) int { return strings.Count(p, "\nmeshagent_call_duration_seconds_count{") }
	t.Logf("series: alice %d, bob %d", series(pa), series(pb))
	for name, p := range map[string]string{"alice": pa, "bob": pb} {
		if strings.Contains(p, "made_up_") {
			t.Errorf("%s: a made-up action became a label value", name)
		}
		if s := series(p); s > 4 {
			t.Errorf("%s: %d series of meshagent_call_duration_seconds", name, s)
		}
	}
	if got := metricSum(pa, "meshagent_call_duration_seconds_count", `side="caller"`, `action="other"`); got != calls {
		t.Errorf("alice counted %v calls as other, want %d", got, calls)
	}
	// bob refuses alice unchecked once she spent her rejection budget: he
	// counts what he decided on.
	if got := metricSum(pb, "meshagent_call_duration_seconds_count", `side="handler"`, `action="other"`); got < 1 {
		t.Errorf("bob counted %v calls as other", got)
	}
}

// The action label values are bounded even when every action is known.
func TestActionLabelsCapped(t *testing.T) {
	var a actionLabels
	yes := func(string) bool { return true }
	for i := range 1000 {
		a.label(fmt.Sprintf("a%d:x", i), yes)
	}
	if got := a.label("a0:x", yes); got != "a0:x" {
		t.Errorf("a label given before: %q", got)
	}
	if got := a.label("late:x", yes); got != otherLabel {
		t.Errorf("past the cap: %q", got)
	}
	if len(a.seen) != maxActionLabels {
		t.Errorf("%d labels", len(a.seen))
	}
	if got := a.label("no:x", func(string) bool { return false }); got != otherLabel {
		t.Errorf("unknown: %q", got)
	}
}
