package discovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/protocol/protocolpb"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// Advertisement limits. The record carries the action names (at most
// MaxActions, so that a record with 16 addresses and its credential stays
// under MaxRecordSize: 32 scopes of 63 characters are 2.1 KB) and the
// digest; the full advertisement is fetched on demand and is at most
// MaxAdvertSize signed bytes, so that a fetch costs the server and the
// client at most that much and a cache of them is bounded by count.
const (
	MaxActions     = 32
	MaxDescription = 512      // bytes, one line
	MaxSchema      = 16 << 10 // bytes of JSON per schema
	MaxAdvertSize  = 64 << 10 // the signed advertisement, body and signature
	MaxName        = 128      // bytes, an MCP tool name's limit
)

// Action is what an agent advertises of one action it serves.
type Action struct {
	Scope string `json:"scope"`
	// Name is what the agent's side calls the action, when it differs
	// from the scope (an MCP tool's real name): at most MaxName bytes of
	// [A-Za-z0-9_.-].
	Name         string          `json:"name,omitempty"`
	Description  string          `json:"description,omitempty"`
	InputSchema  json.RawMessage `json:"input_schema,omitempty"`
	OutputSchema json.RawMessage `json:"output_schema,omitempty"`
}

// Advertisement is a verified advertisement: the actions an agent serves,
// sorted by scope, and the digest its record carries.
type Advertisement struct {
	Agent   trust.PublicKey
	Actions []Action
	Digest  [32]byte
	// Size is the length of the signed advertisement on the wire.
	Size int
}

// CheckAction checks one action's fields: a scope, a description of one
// line of at most MaxDescription bytes, and schemas that are JSON objects
// of at most MaxSchema bytes. The error is one line.
func CheckAction(a Action) error {
	if err := trust.ValidateScope(a.Scope); err != nil {
		return err
	}
	if len(a.Name) > MaxName || strings.IndexFunc(a.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
	}) >= 0 {
		return protocol.Reject(trust.CodeMalformed, "action %s: name %.140q is not 1 to %d characters of [A-Za-z0-9_.-]", a.Scope, a.Name, MaxName)
	}
	if len(a.Description) > MaxDescription {
		return protocol.Reject(trust.CodeTooLarge, "action %s: description is %d bytes, at most %d", a.Scope, len(a.Description), MaxDescription)
	}
	if strings.ContainsAny(a.Description, "\r\n") || !utf8.ValidString(a.Description) {
		return protocol.Reject(trust.CodeMalformed, "action %s: description is not one line of UTF-8", a.Scope)
	}
	for _, s := range []struct {
		what string
		v    json.RawMessage
	}{{"input schema", a.InputSchema}, {"output schema", a.OutputSchema}} {
		if len(s.v) == 0 {
			continue
		}
		if len(s.v) > MaxSchema {
			return protocol.Reject(trust.CodeTooLarge, "action %s: %s is %d bytes, at most %d", a.Scope, s.what, len(s.v), MaxSchema)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(s.v, &m); err != nil || m == nil {
			return protocol.Reject(trust.CodeMalformed, "action %s: %s is not a JSON object", a.Scope, s.what)
		}
	}
	return nil
}

// SignAdvert checks actions (at most MaxActions, no scope twice), sorts
// them by scope and signs the advertisement of id. It returns the wire
// form, its digest (what the record carries) and the sorted names.
func SignAdvert(id *trust.Identity, actions []Action) (*protocolpb.Advert, [32]byte, []string, error) {
	if len(actions) > MaxActions {
		return nil, [32]byte{}, nil, protocol.Reject(trust.CodeTooLarge, "%d actions advertised, at most %d", len(actions), MaxActions)
	}
	actions = slices.Clone(actions)
	slices.SortFunc(actions, func(a, b Action) int { return strings.Compare(a.Scope, b.Scope) })
	body := &protocolpb.AdvertBody{Version: protocol.Version, Agent: publicBytes(id.Public())}
	names := make([]string, 0, len(actions))
	for i, a := range actions {
		if err := CheckAction(a); err != nil {
			return nil, [32]byte{}, nil, err
		}
		if i > 0 && actions[i-1].Scope == a.Scope {
			return nil, [32]byte{}, nil, protocol.Reject(trust.CodeMalformed, "action %s advertised twice", a.Scope)
		}
		body.Actions = append(body.Actions, &protocolpb.ActionAd{Scope: a.Scope, Name: a.Name, Description: a.Description,
			InputSchema: string(a.InputSchema), OutputSchema: string(a.OutputSchema)})
		names = append(names, a.Scope)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil, [32]byte{}, nil, err
	}
	ad := &protocolpb.Advert{Body: b, Signature: id.Sign(wire.DomainAdvert, b)}
	if n := proto.Size(ad); n > MaxAdvertSize {
		return nil, [32]byte{}, nil, protocol.Reject(trust.CodeTooLarge, "advertisement is %d bytes, at most %d", n, MaxAdvertSize)
	}
	return ad, sha256.Sum256(b), names, nil
}

// VerifyAdvert checks a fetched advertisement against what agent's record
// says: its size, its digest, the agent's signature, and that it names
// exactly the record's actions, each well formed. Nothing of it is used
// before this passes.
func VerifyAdvert(ad *protocolpb.Advert, rec *Record) (*Advertisement, error) {
	if ad == nil || rec == nil {
		return nil, protocol.Reject(trust.CodeMalformed, "no advertisement")
	}
	size := proto.Size(ad)
	if size > MaxAdvertSize {
		return nil, protocol.Reject(trust.CodeTooLarge, "advertisement of %s is %d bytes, at most %d", rec.Agent, size, MaxAdvertSize)
	}
	want, ok := rec.AdvertDigest()
	if !ok {
		return nil, protocol.Reject(trust.CodeMalformed, "record of %s advertises nothing", rec.Agent)
	}
	sum := sha256.Sum256(ad.Body)
	if sum != want {
		return nil, protocol.Reject(trust.CodeBadSignature, "advertisement of %s does not match the digest of its record", rec.Agent)
	}
	if !rec.Agent.Verify(wire.DomainAdvert, ad.Body, ad.Signature) {
		return nil, protocol.Reject(trust.CodeBadSignature, "advertisement of %s: signature does not verify", rec.Agent)
	}
	var b protocolpb.AdvertBody
	if err := proto.Unmarshal(ad.Body, &b); err != nil {
		return nil, protocol.Reject(trust.CodeMalformed, "advertisement of %s: %v", rec.Agent, err)
	}
	if b.Version != protocol.Version || !bytes.Equal(b.Agent, rec.Agent[:]) {
		return nil, protocol.Reject(trust.CodeMalformed, "advertisement of %s: version %d or agent differs", rec.Agent, b.Version)
	}
	names := rec.Actions()
	if len(b.Actions) != len(names) {
		return nil, protocol.Reject(trust.CodeMalformed, "advertisement of %s has %d actions, its record %d", rec.Agent, len(b.Actions), len(names))
	}
	out := &Advertisement{Agent: rec.Agent, Digest: sum, Size: size, Actions: make([]Action, len(b.Actions))}
	for i, a := range b.Actions {
		act := Action{Scope: a.Scope, Name: a.Name, Description: a.Description}
		if a.InputSchema != "" {
			act.InputSchema = json.RawMessage(a.InputSchema)
		}
		if a.OutputSchema != "" {
			act.OutputSchema = json.RawMessage(a.OutputSchema)
		}
		if a.Scope != names[i] {
			return nil, protocol.Reject(trust.CodeMalformed, "advertisement of %s names %s where its record names %s", rec.Agent, a.Scope, names[i])
		}
		if err := CheckAction(act); err != nil {
			return nil, err
		}
		out.Actions[i] = act
	}
	return out, nil
}
