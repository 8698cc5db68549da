package main

import (
	"encoding/json"
	"testing"
)

func TestQuery(t *testing.T) {
	var v any
	doc := `{"credential":{"expires":"2026-11-30T02:41:42Z"},"links":[{"id":"aa"},{"id":"bb"}],
		"peers":[{"peer_id":"A","state":"alive","n":1},{"peer_id":"B","state":"dead"}]}`
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"credential.expires":      "2026-11-30T02:41:42Z",
		"credential.expires|unix": "1796006502",
		"links.1.id":              "bb",
		"links.2.id":              "-",
		"peers.[peer_id=B].state": "dead",
		"peers.[peer_id=A].n":     "1",
		"peers.[peer_id=C].state": "-",
		"credential":              `{"expires":"2026-11-30T02:41:42Z"}`,
		"missing.deeper":          "-",
		"links.x":                 "-",
	} {
		if got := query(v, p); got != want {
			t.Errorf("query(%q) = %q, want %q", p, got, want)
		}
	}
}
