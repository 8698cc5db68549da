package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// handlerAdvert reads what a /v1/handle registration advertises of its
// action: the query parameters description (one line), input_schema and
// output_schema (JSON Schema objects, as JSON text). Each is optional; the
// action is advertised either way. The error is one line.
func handlerAdvert(q url.Values, action string) (node.Action, error) {
	a := node.Action{Scope: action, Name: q.Get("name"), Description: q.Get("description")}
	if s := q.Get("input_schema"); s != "" {
		a.InputSchema = json.RawMessage(s)
	}
	if s := q.Get("output_schema"); s != "" {
		a.OutputSchema = json.RawMessage(s)
	}
	return a, discovery.CheckAction(a)
}

// advertQuery adds a's description and schemas to a /v1/handle query.
func advertQuery(q url.Values, description string, input json.RawMessage) url.Values {
	if description != "" {
		q.Set("description", description)
	}
	if len(input) > 0 {
		q.Set("input_schema", string(input))
	}
	return q
}

// actionsTimeout bounds a fetch of another agent's advertisement.
const actionsTimeout = 10 * time.Second

// actionsView is the JSON of GET /v1/actions.
type actionsView struct {
	PeerID  string     `json:"peer_id"`
	Digest  string     `json:"digest,omitempty"`
	Actions []actionAd `json:"actions"`
}

// actionAd is one action of an advertisement, as JSON.
type actionAd = node.Action

// serveActions answers GET /v1/actions?peer=ID: the agent's advertisement,
// fetched from it on demand and verified against its signed record (or
// this agent's own).
func serveActions(n *node.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		k, err := trust.ParsePublicKey(r.URL.Query().Get("peer"))
		if err != nil {
			writeJSON(w, 400, apiError{Error: "peer: " + err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), actionsTimeout)
		defer cancel()
		ad, err := n.Advertisement(ctx, k.PeerID())
		if err != nil {
			writeJSON(w, 502, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		v := actionsView{PeerID: k.PeerID().String(), Actions: ad.Actions}
		if v.Actions == nil {
			v.Actions = []actionAd{}
		} else {
			v.Digest = hex.EncodeToString(ad.Digest[:])
		}
		writeJSON(w, 200, v)
	}
}

// toolAdvert is the /v1/handle query that serves m and advertises the
// MCP tool t: its real name, the first line of its description (cut to
// discovery.MaxDescription bytes) and its input schema (left out past
// discovery.MaxSchema: the action is still served and advertised).
func toolAdvert(m mcpToolScope, t *mcp.Tool) url.Values {
	q := url.Values{"action": {m.Scope}, "name": {m.Tool}}
	if t == nil {
		return q
	}
	q = advertQuery(q, firstLine(t.Description, discovery.MaxDescription), nil)
	if t.InputSchema != nil {
		if b, err := json.Marshal(t.InputSchema); err == nil && len(b) <= discovery.MaxSchema {
			q.Set("input_schema", string(b))
		}
	}
	return q
}

// firstLine returns the first non-empty line of s, cut to at most max bytes
// on a character boundary.
func firstLine(s string, max int) string {
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			s = l
			break
		}
	}
	s = strings.TrimSpace(s) // all blank: ""
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
