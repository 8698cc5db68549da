package trust

import (
	"errors"
	"fmt"
)

// Code is a stable, documented reason for a rejection. Codes appear in audit
// records, in error replies on the wire and in CLI output: never rename one.
type Code string

// Reason codes. ONLY APPEND: these strings are part of the protocol.
const (
	CodeMalformed       Code = "malformed"           // does not decode or breaks a structural rule
	CodeTooLarge        Code = "too_large"           // encoded size over the limit
	CodeTooDeep         Code = "too_deep"            // chain longer than the depth limit
	CodeBadSignature    Code = "bad_signature"       // a signature does not verify
	CodeUntrustedRoot   Code = "untrusted_root"      // not rooted in a configured anchor
	CodeExpired         Code = "expired"             // past its expiry (plus clock skew)
	CodeNotYetValid     Code = "not_yet_valid"       // before its not-before (minus clock skew)
	CodeEscalation      Code = "escalation"          // a link grants more than its parent allowed
	CodeWildcard        Code = "wildcard"            // a scope with a wildcard character
	CodeNotHolder       Code = "not_holder"          // presented by someone other than the holder
	CodeScopeNotGranted Code = "scope_not_granted"   // the action is not in the leaf's scopes
	CodeRevoked         Code = "revoked"             // a link or credential is revoked
	CodeLifetime        Code = "lifetime"            // a credential valid for longer than allowed
	CodeFull            Code = "full"                // a bounded store is full and refuses more
	CodeVersion         Code = "unsupported_version" // a format version this node does not speak
	CodeWeakKey         Code = "weak_key"            // a small-order Ed25519 public key, for which anyone can sign
)

// Error is a rejection: a Code, the index of the failing link (-1 when the
// error is not about one link) and a human-readable detail.
type Error struct {
	Code   Code
	Link   int
	Detail string
}

func (e *Error) Error() string {
	if e.Link >= 0 {
		return fmt.Sprintf("%s: link %d: %s", e.Code, e.Link, e.Detail)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Detail)
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, trust.ErrExpired) works whatever the detail.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinel errors, one per code, for errors.Is.
var (
	ErrMalformed       = &Error{Code: CodeMalformed, Link: -1}
	ErrTooLarge        = &Error{Code: CodeTooLarge, Link: -1}
	ErrTooDeep         = &Error{Code: CodeTooDeep, Link: -1}
	ErrBadSignature    = &Error{Code: CodeBadSignature, Link: -1}
	ErrUntrustedRoot   = &Error{Code: CodeUntrustedRoot, Link: -1}
	ErrExpired         = &Error{Code: CodeExpired, Link: -1}
	ErrNotYetValid     = &Error{Code: CodeNotYetValid, Link: -1}
	ErrEscalation      = &Error{Code: CodeEscalation, Link: -1}
	ErrWildcard        = &Error{Code: CodeWildcard, Link: -1}
	ErrNotHolder       = &Error{Code: CodeNotHolder, Link: -1}
	ErrScopeNotGranted = &Error{Code: CodeScopeNotGranted, Link: -1}
	ErrRevoked         = &Error{Code: CodeRevoked, Link: -1}
	ErrLifetime        = &Error{Code: CodeLifetime, Link: -1}
	ErrFull            = &Error{Code: CodeFull, Link: -1}
)

// ErrKeyPermissions is returned when a private key file could be read or
// replaced by someone else: group or others can access it, another user
// owns it or its directory, or group or others can write its directory.
var ErrKeyPermissions = errors.New("trust: unsafe key file")

// withLink returns err, an *Error, with its link index set to i.
func withLink(err error, i int) error {
	e := err.(*Error)
	e.Link = i
	return e
}

func fail(code Code, link int, format string, args ...any) *Error {
	return &Error{Code: code, Link: link, Detail: fmt.Sprintf(format, args...)}
}

// CodeOf returns the Code of err if it is (or wraps) an *Error, and "" if not.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// DetailOf returns err's detail without its code (which travels on its
// own), with the failing link's index for a chain, or err's text when it
// is no *Error.
func DetailOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		if e.Link >= 0 {
			return fmt.Sprintf("link %d: %s", e.Link, e.Detail)
		}
		return e.Detail
	}
	return err.Error()
}
