package protocol

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// Reason codes added by this layer; they share one namespace with the trust
// codes (trust.Code). ONLY APPEND: these strings are part of the protocol.
const (
	CodeStale          trust.Code = "stale"           // timestamp outside the window
	CodeReplay         trust.Code = "replay"          // (sender, nonce) seen within the window
	CodeReplayFull     trust.Code = "replay_full"     // unused since 21270cf (a full replay guard answers busy); kept: codes are append-only
	CodeWrongRecipient trust.Code = "wrong_recipient" // addressed to another peer or topic
	CodeWrongKind      trust.Code = "wrong_kind"      // e.g. a reply where a request was expected
	CodeImpersonation  trust.Code = "impersonation"   // envelope sender differs from the authenticated peer
	CodeNoToken        trust.Code = "no_token"        // a request or message without a capability chain
	CodeVersion        trust.Code = trust.CodeVersion // "unsupported_version"
	CodeUnlisted       trust.Code = "unlisted"        // sender has no valid credential in the registry
	CodeDead           trust.Code = "dead"            // sender stopped heartbeating
	CodeNoHandler      trust.Code = "no_handler"
	CodeHandlerError   trust.Code = "handler_error"
	CodeUnavailable    trust.Code = "unavailable"
	CodeFlood          trust.Code = "flood" // too many rejected requests from one peer
	// CodeTopicNotGranted: a message on topic T needs the action
	// publish:T; a token for another action does not publish there.
	CodeTopicNotGranted trust.Code = "topic_not_granted"
	// CodeUnknown stands for an error reply's code that this version does
	// not define (a newer peer's, or made up): a peer chooses the code, and
	// it must not grow what the caller keeps by code (audit reasons,
	// metric series).
	CodeUnknown trust.Code = "unknown_code"
	// CodeBusy: the receiver sheds load (its replay guard, a handler at
	// capacity). It is not the sender's doing: it is never charged, and it
	// says when to try again (BusyError).
	CodeBusy trust.Code = "busy"
	// CodeProgressBound: a callee sent more progress messages on one call,
	// or a larger one, than the caller takes (node.MaxProgressPerCall,
	// node.MaxProgressBody). The call fails; the caller is charged nothing.
	CodeProgressBound trust.Code = "progress_bound"
)

// BusyError is a busy refusal with the time to wait before trying again.
type BusyError struct {
	RetryAfter time.Duration
	Err        error // a *trust.Error with CodeBusy
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.RetryAfter.Round(time.Millisecond))
}

func (e *BusyError) Unwrap() error { return e.Err }

// Busy returns a busy refusal asking the caller to retry after d.
func Busy(d time.Duration, format string, args ...any) error {
	return &BusyError{RetryAfter: d, Err: Reject(CodeBusy, format, args...)}
}

// RetryAfter returns how long err asks the caller to wait, and whether err
// is a busy refusal at all.
func RetryAfter(err error) (time.Duration, bool) {
	var b *BusyError
	if errors.As(err, &b) {
		return b.RetryAfter, true
	}
	return 0, trust.CodeOf(err) == CodeBusy
}

var knownCodes = map[trust.Code]bool{}

func init() {
	for _, c := range []trust.Code{trust.CodeMalformed, trust.CodeTooLarge, trust.CodeTooDeep, trust.CodeBadSignature,
		trust.CodeUntrustedRoot, trust.CodeExpired, trust.CodeNotYetValid, trust.CodeEscalation, trust.CodeWildcard,
		trust.CodeNotHolder, trust.CodeScopeNotGranted, trust.CodeRevoked, trust.CodeLifetime, trust.CodeFull,
		trust.CodeVersion, trust.CodeWeakKey,
		CodeStale, CodeReplay, CodeReplayFull, CodeWrongRecipient, CodeWrongKind, CodeImpersonation, CodeNoToken,
		CodeUnlisted, CodeDead, CodeNoHandler, CodeHandlerError, CodeUnavailable, CodeFlood, CodeTopicNotGranted,
		CodeUnknown, CodeBusy, CodeProgressBound} {
		knownCodes[c] = true
	}
}

// KnownCode reports whether c is a reason code this version defines.
func KnownCode(c trust.Code) bool { return knownCodes[c] }

// Sentinels for errors.Is.
var (
	ErrStale          = &trust.Error{Code: CodeStale, Link: -1}
	ErrReplay         = &trust.Error{Code: CodeReplay, Link: -1}
	ErrReplayFull     = &trust.Error{Code: CodeReplayFull, Link: -1}
	ErrWrongRecipient = &trust.Error{Code: CodeWrongRecipient, Link: -1}
	ErrWrongKind      = &trust.Error{Code: CodeWrongKind, Link: -1}
	ErrImpersonation  = &trust.Error{Code: CodeImpersonation, Link: -1}
	ErrNoToken        = &trust.Error{Code: CodeNoToken, Link: -1}
	ErrUnlisted       = &trust.Error{Code: CodeUnlisted, Link: -1}
	ErrDead           = &trust.Error{Code: CodeDead, Link: -1}
)

// Reject makes a rejection error with a code and detail.
func Reject(code trust.Code, format string, args ...any) *trust.Error {
	return &trust.Error{Code: code, Link: -1, Detail: fmt.Sprintf(format, args...)}
}
