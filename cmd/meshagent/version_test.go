package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// What releaseBinary stamps in.
const (
	stampedVersion  = "v9.8.7-3-gabcdef0-dirty"
	stampedRevision = "abcdef0123456789"
)

var release struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	out  []byte
}

// releaseBinary is the meshagent binary built once for the package's
// tests as `make release` builds it, without the meshsim tag, symbols
// kept (release strips them with -s -w): CGO_ENABLED=0, -trimpath, the
// version and revision stamped in. It skips the test under -short or
// without a go tool.
func releaseBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the binary")
	}
	release.once.Do(func() {
		if release.dir, release.err = os.MkdirTemp("", "meshagent-bin"); release.err != nil {
			return
		}
		release.bin = filepath.Join(release.dir, "meshagent")
		build := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-X main.version="+stampedVersion+" -X main.revision="+stampedRevision, "-o", release.bin, ".")
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly") // not the tests' -tags meshsim
		release.out, release.err = build.CombinedOutput()
	})
	if release.err != nil {
		t.Fatalf("go build: %v\n%s", release.err, release.out)
	}
	return release.bin
}

// A binary built as `make release` builds it (CGO_ENABLED=0, -trimpath,
// the version and revision stamped in with -X) says them in `meshagent
// version`, and is static: no program interpreter, no shared library.
func TestVersionOfStampedBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	// The flags of releaseBinary are the Makefile's: a renamed variable
	// fails here.
	for _, want := range []string{"-X main.version=$(VERSION)", "-X main.revision=$(REVISION)", "CGO_ENABLED=0", "-trimpath"} {
		if !strings.Contains(string(mk), want) {
			t.Fatalf("the Makefile's release target does not say %q", want)
		}
	}
	bin := releaseBinary(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("meshagent version: %v\n%s", err, out)
	}
	want := "meshagent " + stampedVersion + "\nrevision " + stampedRevision + "\nbuilt with " + runtime.Version() + "\n"
	if string(out) != want {
		t.Fatalf("meshagent version said\n%s\nwant\n%s", out, want)
	}
	if runtime.GOOS != "linux" {
		return
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("the binary is not static: it has a %v program header", p.Type)
		}
	}
}

// A plain build says it is one.
func TestVersionUnstamped(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "meshagent dev\nrevision unknown\nbuilt with go") {
		t.Fatalf("version: %d %q %q", code, out.String(), errb.String())
	}
	if code := run([]string{"version", "extra"}, &out, &errb); code != 2 {
		t.Fatalf("version extra: exit %d", code)
	}
}

// TestMain removes releaseBinary's build once every test ran.
func TestMain(m *testing.M) {
	code := m.Run()
	if release.dir != "" {
		os.RemoveAll(release.dir)
	}
	os.Exit(code)
}
