//go:build meshsim

package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every error answer of the local API reads as one line: the code once,
// then the daemon's text; a busy one says first when to try again; one
// without a JSON error has the HTTP status.
func TestAPIErrorAnswers(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		want   string
	}{
		{403, `{"error":"no_token: rejected by X: a request needs a token","code":"no_token"}`, "no_token: rejected by X: a request needs a token"},
		{400, `{"error":"to: not a peer ID","code":"malformed"}`, "malformed: to: not a peer ID"},
		{409, `{"error":"read:logs is already handled"}`, "read:logs is already handled"},
		{503, `{"error":"busy: the replay guard is full (retry after 250ms)","code":"busy","retry_after_ms":250}`, "busy: retry after 250ms: the replay guard is full"},
		{502, `<html>bad gateway</html>`, "local API: 502 Bad Gateway"},
		{404, ``, "local API: 404 Not Found"},
	} {
		rec := httptest.NewRecorder()
		rec.WriteHeader(c.status)
		rec.WriteString(c.body)
		if got := readAPIError(rec.Result()).err().Error(); got != c.want {
			t.Errorf("%d %s: %q, want %q", c.status, c.body, got, c.want)
		}
	}
}

// A client reads its agent's config once, when it is made: a command that
// makes many requests (handle replies to each call) does not read it again.
func TestLocalClientReadsConfigOnce(t *testing.T) {
	home := fakeDaemon(t, map[string]string{})
	c, err := newLocalClient(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, configFile), []byte("api_socket: [not, a, path]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		var out strings.Builder
		err := c.call(t.Context(), "GET", "/v1/nothing", nil, &out)
		if err == nil || !strings.Contains(err.Error(), "no stream /v1/nothing") {
			t.Fatalf("want the fake daemon's 404, got %v", err)
		}
	}
	if _, err := newLocalClient(home); err == nil {
		t.Fatal("a new client read the broken config without an error")
	}
}
