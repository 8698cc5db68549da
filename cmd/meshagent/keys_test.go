package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyDirectoryChecked: a key in a directory that others can write is
// refused with one line naming the command that fixes it.
func TestKeyDirectoryChecked(t *testing.T) {
	home := filepath.Join(t.TempDir(), "a")
	mustOK(t, "init", "--home", home, "--name", "a")
	if err := os.Chmod(home, 0o777); err != nil {
		t.Fatal(err)
	}
	r := cli(t, "id", "--home", home)
	if r.code != 1 || !strings.Contains(r.stderr, "run: chmod go-w "+home) || strings.Contains(r.stderr, "\n") {
		t.Fatalf("key in a world-writable directory: %+v", r)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	mustOK(t, "id", "--home", home)
}
