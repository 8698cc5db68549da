package node

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// A reply this node refused for its own capacity is busy here, with a
// retry-after (the guard's when it gave one), and names this node as the
// one at capacity, not the callee; a reply refused for anything else
// stays the refusal it was.
func TestReplyRefusedForOwnCapacity(t *testing.T) {
	to := peer.ID("callee")
	for _, c := range []struct {
		err  error
		wait time.Duration
	}{
		{protocol.Reject(protocol.CodeReplayFull, "replay cache holds 32768 nonces of x, the per-sender limit"), callsBusyRetry},
		{protocol.Reject(trust.CodeFull, "full"), callsBusyRetry},
		{protocol.Busy(3*time.Second, "the replay guard is full"), 3 * time.Second},
		{protocol.Busy(time.Hour, "the replay guard is full"), maxRetryAfter},
	} {
		err := replyRefused(to, c.err)
		d, busy := protocol.RetryAfter(err)
		if trust.CodeOf(err) != protocol.CodeBusy || !busy || d != c.wait {
			t.Errorf("%v: %v (retry after %s, want %s)", c.err, err, d, c.wait)
		}
		if !strings.Contains(err.Error(), "this node is busy") || !strings.Contains(err.Error(), "not "+to.String()+"'s doing") {
			t.Errorf("%v: %q does not say whose capacity it is", c.err, err)
		}
	}
	err := replyRefused(to, protocol.Reject(protocol.CodeStale, "off"))
	if _, busy := protocol.RetryAfter(err); busy || !errors.Is(err, protocol.ErrStale) || !strings.Contains(err.Error(), "reply from "+to.String()+" rejected") {
		t.Errorf("a stale reply: %v", err)
	}
}

// A retry-after is never zero, and never more than a minute: the
// callee's word.
func TestRetryAfterIsBounded(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{0: callsBusyRetry, -time.Second: callsBusyRetry,
		time.Millisecond: time.Millisecond, 2 * time.Hour: maxRetryAfter} {
		if got := retryAfter(in); got != want {
			t.Errorf("retryAfter(%s) = %s, want %s", in, got, want)
		}
	}
}
