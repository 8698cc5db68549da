//go:build meshsim

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/simulations"
)

const logsSchemaJSON = `{"type":"object","properties":{"since":{"type":"string"}}}`

// peerActions returns what `meshagent peers` at home lists as peer's
// actions.
func peerActions(t *testing.T, home, peer string) []string {
	t.Helper()
	var entries []struct {
		PeerID  string   `json:"peer_id"`
		Actions []string `json:"actions"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "peers", "--home", home)), &entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.PeerID == peer {
			return e.Actions
		}
	}
	return nil
}

func waitPeerActions(t *testing.T, home, peer string, want ...string) {
	t.Helper()
	if err := simulations.WaitFor(10*time.Second, func() error {
		if got := peerActions(t, home, peer); !slices.Equal(got, want) {
			return fmt.Errorf("peers lists %v, want %v", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A handler registered on bob's /v1/handle with a description and an
// input schema is advertised: alice's `meshagent peers` and /v1/peers
// list the action, /v1/actions gives the full advertisement fetched from
// bob's daemon and verified; when the handler's stream ends the action is
// no longer advertised. Bad input is refused in one line and registers
// nothing.
func TestDaemonAdvertisesHandledActions(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "read:logs", "", nil)
	admitted(t, a, bID, 10*time.Second)
	for name, q := range map[string]url.Values{
		"two lines":     {"action": {"read:logs"}, "description": {"one\ntwo"}},
		"not an object": {"action": {"read:logs"}, "input_schema": {"[1]"}},
		"not JSON":      {"action": {"read:logs"}, "input_schema": {"{"}},
		"too long":      {"action": {"read:logs"}, "description": {strings.Repeat("a", 513)}},
	} {
		_, code, body := getStream(t, b, "/v1/handle?"+q.Encode())
		if code != 400 || strings.Count(strings.TrimSpace(body), "\n") != 0 {
			t.Fatalf("%s: %d %s", name, code, body)
		}
	}
	// Nothing was registered: the call finds no handler, and nothing is advertised.
	if r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs", "--body", "{}"); r.code == 0 || !strings.Contains(r.stderr, "no_handler") {
		t.Fatalf("call after refused registrations: %+v", r)
	}
	if got := peerActions(t, a, bID); len(got) != 0 {
		t.Fatalf("advertised after refusals: %v", got)
	}

	q := url.Values{"action": {"read:logs"}, "description": {"Returns the logs since a time."}, "input_schema": {logsSchemaJSON}}
	s, code, body := openStream(t, b, "/v1/handle?"+q.Encode())
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	waitPeerActions(t, a, bID, "read:logs")
	var buf bytes.Buffer
	if err := apiCall(a, "GET", "/v1/actions?peer="+bID, nil, &buf); err != nil {
		t.Fatal(err)
	}
	var view struct {
		PeerID  string `json:"peer_id"`
		Digest  string `json:"digest"`
		Actions []struct {
			Scope       string          `json:"scope"`
			Description string          `json:"description"`
			InputSchema json.RawMessage `json:"input_schema"`
		} `json:"actions"`
	}
	if err := json.Unmarshal(buf.Bytes(), &view); err != nil {
		t.Fatal(err)
	}
	if view.PeerID != bID || len(view.Digest) != 64 || len(view.Actions) != 1 || view.Actions[0].Description != "Returns the logs since a time." ||
		string(view.Actions[0].InputSchema) != logsSchemaJSON {
		t.Fatalf("/v1/actions: %s", buf.String())
	}
	if err := apiCall(a, "GET", "/v1/actions?peer=nonsense", nil, &buf); err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a bad peer: %v", err)
	}
	s.close()
	waitPeerActions(t, a, bID)
}

// `meshagent handle --description --input-schema` advertises the action
// with them while it runs; a description of two lines is refused in one
// line before anything is served.
func TestHandleCLIAdvertises(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "read:logs", "", nil)
	admitted(t, a, bID, 10*time.Second)
	r := within(t, 10*time.Second, "handle", "--home", b, "--action", "read:logs", "--description", "one\ntwo", "--", "cat")
	if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "one line") {
		t.Fatalf("two lines: %+v", r)
	}
	done := background(t, "handle", "--home", b, "--action", "read:logs", "--description", "Log lines.", "--input-schema", logsSchemaJSON, "--count", "1", "--", "cat")
	waitPeerActions(t, a, bID, "read:logs")
	var buf bytes.Buffer
	if err := apiCall(a, "GET", "/v1/actions?peer="+bID, nil, &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"description":"Log lines."`) || !strings.Contains(buf.String(), `"input_schema":`+logsSchemaJSON) {
		t.Fatalf("/v1/actions: %s", buf.String())
	}
	if r := cli(t, "send", "--home", a, "--to", bID, "--action", "read:logs", "--body", "{}"); r.code != 0 {
		t.Fatalf("send: %+v", r)
	}
	if r := done(); r.code != 0 {
		t.Fatalf("handle: %+v", r)
	}
	waitPeerActions(t, a, bID)
}

// Past discovery.MaxActions handled actions, the next is served but not
// advertised, and the daemon says so in a response header; the record
// keeps the first MaxActions.
func TestHandledPastTheAdvertBound(t *testing.T) {
	_, a, b, _, bID := twoDaemons(t, "do:extra", "", nil)
	admitted(t, a, bID, 10*time.Second)
	var want []string
	for i := range discovery.MaxActions {
		scope := fmt.Sprintf("do:thing%02d", i)
		want = append(want, scope)
		if _, code, body := openStream(t, b, "/v1/handle?action="+scope); code != 200 {
			t.Fatalf("%s: %d %s", scope, code, body)
		}
	}
	resp, code, body := getStream(t, b, "/v1/handle?action=do:extra")
	if code != 200 {
		t.Fatalf("do:extra: %d %s", code, body)
	}
	if h := resp.Header.Get("Meshagent-Not-Advertised"); !strings.Contains(h, "at most 32") {
		t.Fatalf("header %q", h)
	}
	waitPeerActions(t, a, bID, want...)
	// Served all the same: the call reaches the stream.
	go func() {
		_ = cli(t, "send", "--home", a, "--to", bID, "--action", "do:extra", "--body", "{}", "--timeout", "2s")
	}()
	if ev, err := newRawStream(resp).read(); err != nil || !strings.Contains(ev.data, "do:extra") {
		t.Fatalf("no request for do:extra: %+v %v", ev, err)
	}
}
