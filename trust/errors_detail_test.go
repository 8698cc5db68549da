package trust

import (
	"errors"
	"fmt"
	"testing"
)

// DetailOf gives a refusal's detail without its code, with the link index
// of a chain's refusal, and the text of any other error.
func TestDetailOf(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want string
	}{
		{&Error{Code: CodeExpired, Link: -1, Detail: "past its expiry"}, "past its expiry"},
		{&Error{Code: CodeEscalation, Link: 2, Detail: "widens read:*"}, "link 2: widens read:*"},
		{fmt.Errorf("call: %w", &Error{Code: CodeRevoked, Link: -1, Detail: "revoked"}), "revoked"},
		{errors.New("plain"), "plain"},
	} {
		if got := DetailOf(c.err); got != c.want {
			t.Errorf("DetailOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
