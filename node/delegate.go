package node

import "github.com/meshagent/meshagent/trust"

// Delegate signs, with this agent's key, a token for to narrowed from
// parent by g (trust.Token.Delegate: a subset of the parent's delegatable
// scopes, an expiry no later than its, no wildcard). A nil parent is the
// first held token that can be so delegated. The refusals are
// trust.Token.Delegate's.
func (n *Node) Delegate(parent *trust.Token, to trust.PublicKey, g trust.Grant) (*trust.Token, error) {
	now := n.now()
	if parent != nil {
		return parent.Delegate(n.cfg.Identity, to, g, now)
	}
	var err error = &trust.Error{Code: trust.CodeScopeNotGranted, Link: -1, Detail: "this agent holds no token valid now that grants " + firstScope(g)}
	for _, t := range n.Tokens() {
		if n.verifier.Authorize(t, n.self, firstScope(g), now) != nil {
			continue // not valid now, or not for these scopes
		}
		var nt *trust.Token
		if nt, err = t.Delegate(n.cfg.Identity, to, g, now); err == nil {
			return nt, nil
		}
	}
	return nil, err
}

func firstScope(g trust.Grant) string {
	if len(g.Scopes) == 0 {
		return ""
	}
	return g.Scopes[0]
}
