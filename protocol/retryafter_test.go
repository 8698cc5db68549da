package protocol

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/meshagent/meshagent/trust"
)

// A busy error envelope carries its retry-after in whole milliseconds; one
// read from the wire is capped at an hour (more would overflow).
func TestRetryAfterOnTheWire(t *testing.T) {
	t.Parallel()
	id, _ := trust.GenerateIdentity(rand.Reader)
	for _, tc := range []struct{ sent, want time.Duration }{
		{1500 * time.Millisecond, 1500 * time.Millisecond},
		{0, 0},
		{1<<62 - 1, time.Hour},
	} {
		raw, err := Seal(id, &Envelope{Kind: KindError, RecipientPeer: id.Public(), ErrorCode: CodeBusy, RetryAfter: tc.sent}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		e, err := Open(raw, 1<<20, 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		if e.RetryAfter != tc.want {
			t.Errorf("sent %s, read %s, want %s", tc.sent, e.RetryAfter, tc.want)
		}
	}
}
