//go:build unix

package trust

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyFileOwnership: a key file that another user owns, or that sits in
// a directory another user owns or group or others can write, is refused
// with one line that says what to run; the run fixes it.
func TestKeyFileOwnership(t *testing.T) {
	t.Parallel()
	const stranger = 4242 // a uid nobody in the test runs as
	euid := os.Geteuid()
	for _, c := range []struct {
		name     string
		root     bool // needs root to set up (chown to another uid)
		setup    func(dir, key string) error
		fix      func(dir, key string) error
		wantText func(dir, key string) string // "" means: accepted
	}{
		{"private directory", false, func(dir, key string) error { return nil }, nil, nil},
		{"directory others may read", false, func(dir, key string) error { return os.Chmod(dir, 0o755) }, nil, nil},
		{"directory group may write", false, func(dir, key string) error { return os.Chmod(dir, 0o770) },
			func(dir, key string) error { return os.Chmod(dir, 0o750) }, // chmod go-w
			func(dir, key string) string { return "run: chmod go-w " + dir }},
		{"directory others may write", false, func(dir, key string) error { return os.Chmod(dir, 0o707) },
			func(dir, key string) error { return os.Chmod(dir, 0o705) },
			func(dir, key string) string { return "run: chmod go-w " + dir }},
		{"file owned by another user", true, func(dir, key string) error { return os.Chown(key, stranger, -1) },
			func(dir, key string) error { return os.Chown(key, euid, -1) },
			func(dir, key string) string {
				return fmt.Sprintf("owned by uid %d, not by uid %d that runs this process; run: sudo chown %d %s", stranger, euid, euid, key)
			}},
		{"directory owned by another user", true, func(dir, key string) error { return os.Chown(dir, stranger, -1) },
			func(dir, key string) error { return os.Chown(dir, euid, -1) },
			func(dir, key string) string {
				return fmt.Sprintf("owned by uid %d, not by uid %d that runs this process or root; run: sudo chown %d %s", stranger, euid, euid, dir)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if c.root && euid != 0 {
				t.Skipf("needs root to chown a file to uid %d; this test runs as uid %d", stranger, euid)
			}
			dir := filepath.Join(t.TempDir(), "home")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			key := filepath.Join(dir, "identity.key")
			id := testIdentity(t, 2)
			if err := id.Save(key); err != nil {
				t.Fatal(err)
			}
			if err := c.setup(dir, key); err != nil {
				t.Fatal(err)
			}
			_, err := LoadIdentity(key)
			if c.wantText == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrKeyPermissions) {
				t.Fatalf("want ErrKeyPermissions, got %v", err)
			}
			if want := c.wantText(dir, key); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if err := c.fix(dir, key); err != nil {
				t.Fatal(err)
			}
			if got, err := LoadIdentity(key); err != nil || !got.Public().Equal(id.Public()) {
				t.Fatalf("after the fix the error named: %v", err)
			}
		})
	}
}
