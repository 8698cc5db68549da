package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/trust"
)

// The page's bounds: what one page load may cost.
const (
	consoleMaxAgents     = 1000            // agents listed
	consoleFetchAdverts  = 64              // advertisements fetched (the node caches them by digest)
	consoleFetchParallel = 8               // fetched at once
	consoleAdvertWithin  = 2 * time.Second // for all of them
)

// consolePage is what the page shows. Every string in it may come from a
// peer (names, descriptions, schemas, reasons): the template escapes them.
type consolePage struct {
	Self        consoleSelf
	Agents      []consoleAgent
	MoreAgents  int
	Revocations []revocationView
	// RevocationsHeld is how many the node holds; Revocations lists the
	// latest consoleMaxRevocationsShown of them.
	RevocationsHeld int
	Form            inspectForm
	Inspection      *inspection // nil until a token is inspected
	TailQueue       int
	Generated       string
}

type consoleSelf struct {
	Name, PeerID, CredentialExpires, Warning string
}

type consoleAgent struct {
	Name, PeerID, State, LastHeard, CredentialExpires string
	Self                                              bool
	Actions                                           []consoleAction
	// AdvertNote says why Actions has names only: not fetched, or the
	// fetch failed.
	AdvertNote string
}

type consoleAction struct {
	Scope, Name, Description, InputSchema string
}

// inspectForm is what the token inspector was given.
type inspectForm struct {
	Token, Holder, Action string
}

// inspection is a token decoded and its verdict.
type inspection struct {
	Valid   bool
	Verdict string // as `token verify` prints it
	Holder  string // the holder it was checked for
	Action  string
	Decoded *trust.TokenInfo // nil if it does not parse
	Names   map[string]string
}

// page gathers the page's data; in, when not nil, is a token to inspect.
func (c *consoleServer) page(ctx context.Context, in *inspectForm) *consolePage {
	now := time.Now()
	n := c.n
	cred := n.Credential()
	p := &consolePage{
		Self: consoleSelf{Name: cred.Name, PeerID: n.ID().String(), CredentialExpires: ago(cred.Expires, now),
			Warning: n.Stats().Credential.Warning},
		Revocations:     c.revs.list(now),
		RevocationsHeld: n.Stats().Revocations,
		TailQueue:       consoleTailQueue,
		Generated:       now.UTC().Format(time.RFC3339),
	}
	entries := c.agents()
	slices.SortFunc(entries, func(a, b discovery.Entry) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.PeerID, b.PeerID))
	})
	if len(entries) > consoleMaxAgents {
		p.MoreAgents = len(entries) - consoleMaxAgents
		entries = entries[:consoleMaxAgents]
	}
	names := make(map[string]string, len(entries))
	p.Agents = make([]consoleAgent, len(entries))
	for i, e := range entries {
		id := e.PeerID.String()
		names[id] = e.Name
		a := consoleAgent{Name: e.Name, PeerID: id, State: e.State.String(), Self: e.PeerID == n.ID(),
			LastHeard: ago(e.LastHeartbeat, now), CredentialExpires: ago(e.Expires, now)}
		for _, s := range e.Actions {
			a.Actions = append(a.Actions, consoleAction{Scope: s})
		}
		p.Agents[i] = a
	}
	c.fetchAdverts(ctx, entries, p.Agents)
	if in != nil {
		p.Form = *in
		p.Inspection = c.inspect(*in, names, now)
	}
	return p
}

// agents returns the registry's entries and, when the registry does not
// list it (it lists the agents this one learnt of), this agent's own:
// alive, with the actions it advertises.
func (c *consoleServer) agents() []discovery.Entry {
	entries := c.n.Peers()
	self := c.n.ID()
	for _, e := range entries {
		if e.PeerID == self {
			return entries
		}
	}
	cred := c.n.Credential()
	e := discovery.Entry{PeerID: self, Name: cred.Name, State: discovery.Alive, Expires: cred.Expires}
	if ad, err := c.n.Advertisement(context.Background(), self); err == nil && len(ad.Actions) > 0 {
		e.AdvertDigest = hex.EncodeToString(ad.Digest[:])
		for _, a := range ad.Actions {
			e.Actions = append(e.Actions, a.Scope)
		}
	}
	return append(entries, e)
}

// fetchAdverts fills in the descriptions and schemas of the first
// consoleFetchAdverts agents that advertise actions and are not dead.
func (c *consoleServer) fetchAdverts(ctx context.Context, entries []discovery.Entry, agents []consoleAgent) {
	ctx, cancel := context.WithTimeout(ctx, consoleAdvertWithin)
	defer cancel()
	sem := make(chan struct{}, consoleFetchParallel)
	var wg sync.WaitGroup
	fetched := 0
	for i, e := range entries {
		if e.AdvertDigest == "" {
			continue
		}
		if e.State == discovery.Dead || fetched == consoleFetchAdverts {
			agents[i].AdvertNote = "descriptions not fetched"
			continue
		}
		fetched++
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ad, err := c.n.Advertisement(ctx, e.PeerID)
			if err != nil {
				agents[i].AdvertNote = "descriptions not fetched: " + err.Error()
				return
			}
			acts := make([]consoleAction, len(ad.Actions))
			for j, x := range ad.Actions {
				acts[j] = consoleAction{Scope: x.Scope, Name: x.Name, Description: x.Description, InputSchema: string(x.InputSchema)}
			}
			agents[i].Actions = acts
		})
	}
	wg.Wait()
}

// inspect decodes in.Token and decides it as `token verify` does
// (tokenVerdict), with the node's anchors and the revocations it holds.
func (c *consoleServer) inspect(in inspectForm, names map[string]string, now time.Time) *inspection {
	ins := &inspection{Action: strings.TrimSpace(in.Action), Names: names}
	var holder *trust.PublicKey
	if h := strings.TrimSpace(in.Holder); h != "" {
		k, err := trust.ParsePublicKey(h)
		if err != nil {
			ins.Verdict = "holder: " + err.Error()
			return ins
		}
		holder = &k
	}
	t, err := parsePastedToken(in.Token)
	if err == nil {
		info := t.Info()
		ins.Decoded = &info
		ins.Holder = info.Holder
		if holder != nil {
			ins.Holder = holder.String()
		}
		c.revs.v.PruneRevocations(now)
		err = tokenVerdict(c.revs.v, t, holder, ins.Action, now)
	}
	ins.Valid, ins.Verdict = err == nil, verdictText(err)
	return ins
}

// parsePastedToken reads a token pasted as PEM (what token files hold) or
// as the hex of its bytes.
func parsePastedToken(s string) (*trust.Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, &trust.Error{Code: trust.CodeMalformed, Link: -1, Detail: "no token given"}
	}
	var raw []byte
	if strings.HasPrefix(s, "-----BEGIN") {
		b, err := trust.DecodePEM([]byte(s), trust.PEMToken)
		if err != nil {
			return nil, &trust.Error{Code: trust.CodeMalformed, Link: -1, Detail: err.Error()}
		}
		raw = b
	} else if b, err := hex.DecodeString(s); err == nil {
		raw = b
	} else {
		return nil, &trust.Error{Code: trust.CodeMalformed, Link: -1, Detail: "neither a PEM token nor hex"}
	}
	return trust.ParseToken(raw, trust.DefaultMaxTokenSize)
}

// ago says when t is relative to now: "12s ago", "in 3h0m0s".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t).Round(time.Second)
	if d >= 0 {
		return fmt.Sprintf("%s ago", d)
	}
	return fmt.Sprintf("in %s", -d)
}
