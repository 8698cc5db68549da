package node

import (
	"slices"
	"sync"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// maxTokenChoices bounds the actions whose token choice is remembered;
// past it the choices are forgotten and made again. Actions come from the
// embedder or the local API's user, so their number is theirs to pick.
const maxTokenChoices = 1024

// tokenChoice remembers, per action, which of the agent's own tokens
// tokenFor picked, so that a call does not re-run Authorize over every
// held token. A choice holds while the held tokens are the same ones
// (AddToken replaces the list), the verifier's revocation generation has
// not moved, and now stays within the span where no token's verdict
// changes with time: until the chosen token expires or an earlier token
// in the list becomes valid. Its lock is a leaf.
type tokenChoice struct {
	mu      sync.Mutex
	tokens  []*trust.Token // the held tokens the choices were made from
	gen     uint64         // trust.Verifier.Generation they were made at
	choices map[string]tokenChosen
}

// tokenChosen is one action's choice: tok (nil: none grants it) for every
// now in [from, until).
type tokenChosen struct {
	tok         *trust.Token
	from, until time.Time
}

func (c *tokenChoice) get(tokens []*trust.Token, gen uint64, action string, now time.Time) (*trust.Token, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || !slices.Equal(c.tokens, tokens) {
		return nil, false
	}
	ch, ok := c.choices[action]
	if !ok || now.Before(ch.from) || !now.Before(ch.until) {
		return nil, false
	}
	return ch.tok, true
}

func (c *tokenChoice) put(tokens []*trust.Token, gen uint64, action string, ch tokenChosen) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.choices == nil || c.gen != gen || !slices.Equal(c.tokens, tokens) || len(c.choices) >= maxTokenChoices {
		c.tokens, c.gen, c.choices = slices.Clone(tokens), gen, map[string]tokenChosen{}
	}
	c.choices[action] = ch
}

// tokenFor returns the first held token whose leaf grants action to this
// agent and is valid now, as Authorize over the held tokens says, from
// the remembered choice when it still holds.
func (n *Node) tokenFor(action string) *trust.Token {
	if trust.ValidateScope(action) != nil {
		return nil // no token grants it; the callee says why
	}
	now := n.now()
	n.mu.Lock()
	tokens := n.cfg.Tokens
	n.mu.Unlock()
	gen := n.verifier.Generation() // before choosing: a revocation meanwhile moves it
	if t, ok := n.choice.get(tokens, gen, action, now); ok {
		return t
	}
	ch := n.chooseToken(tokens, action, now)
	n.choice.put(tokens, gen, action, ch)
	return ch.tok
}

// chooseToken runs Authorize over tokens in order and returns the first
// that passes, with the span of time in which that answer holds.
func (n *Node) chooseToken(tokens []*trust.Token, action string, now time.Time) tokenChosen {
	skew := n.verifier.Policy().ClockSkew
	ch := tokenChosen{from: now, until: now.Add(100 * 365 * 24 * time.Hour)}
	for _, t := range tokens {
		if len(t.Links) == 0 {
			continue
		}
		nb, exp := t.Window()
		if n.verifier.Authorize(t, n.self, action, now) == nil {
			ch.tok = t
			ch.until = minTime(ch.until, exp.Add(skew))
			return ch
		}
		if start := nb.Add(-skew); start.After(now) { // may pass once valid
			ch.until = minTime(ch.until, start)
		}
	}
	return ch
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
