package trust

import "strings"

// Scope rules. A scope is "verb:resource": exactly one colon, both parts
// non-empty, each part 1 to 31 characters from the alphabet [a-z0-9._-] and
// starting with a letter or digit. Matching is exact: there are no
// wildcards, prefixes or hierarchies, so "read:logs" grants nothing but
// "read:logs".
const (
	MaxScopePart = 31 // characters per part
	MaxScopes    = 32 // scopes per link
)

// wildcardChars are refused with CodeWildcard rather than CodeMalformed,
// so that an attempt to grant "everything" is named for what it is.
const wildcardChars = "*?[]{}%#!"

// ValidateScope checks one scope against the rules above.
func ValidateScope(s string) error {
	if strings.ContainsAny(s, wildcardChars) {
		return fail(CodeWildcard, -1, "scope %q contains a wildcard; scopes are explicit verb:resource strings", s)
	}
	verb, res, ok := strings.Cut(s, ":")
	if !ok || strings.Contains(res, ":") {
		return fail(CodeMalformed, -1, "scope %q must be verb:resource with exactly one colon", s)
	}
	if !validPart(verb) || !validPart(res) {
		return fail(CodeMalformed, -1, "scope %q: each part must be 1-%d characters of [a-z0-9._-] starting with a letter or digit", s, MaxScopePart)
	}
	return nil
}

func validPart(p string) bool {
	if len(p) == 0 || len(p) > MaxScopePart {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// validateScopeList checks a list: 1 to MaxScopes valid scopes, no duplicates.
func validateScopeList(scopes []string, link int) error {
	if len(scopes) == 0 {
		return fail(CodeMalformed, link, "no scopes")
	}
	if len(scopes) > MaxScopes {
		return fail(CodeMalformed, link, "%d scopes, at most %d", len(scopes), MaxScopes)
	}
	for i, s := range scopes {
		if err := ValidateScope(s); err != nil {
			e := err.(*Error)
			e.Link = link
			return e
		}
		for _, t := range scopes[:i] {
			if s == t {
				return fail(CodeMalformed, link, "scope %q listed twice", s)
			}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
