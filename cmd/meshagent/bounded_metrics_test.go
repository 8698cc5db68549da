//go:build meshsim

package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
)

// Attack 12: an enrolled callee answers every call with a signed error
// reply whose code it made up, 4 KiB long and new each time. The caller's
// /metrics gains no series per code: 300 such calls are counted under one
// reason, and the page grows by a few bytes (a few KB if a new reason shows up).
func TestBoundedErrorCodeLabels(t *testing.T) {
	dir, anchor, a, _ := enrolled(t)
	dn := startDaemon(t, a, daemonConfig("alice", anchor))

	// mallory: an enrolled node whose RPC handler forges error codes.
	ak, err := trust.LoadAnchorKey(filepath.Join(dir, "ca", anchorKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := trust.IssueCredential(ak, id.Public(), "mallory", time.Now().Add(-time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential, cfg.Policy = id, cred, trust.DefaultPolicy(ak.Public())
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Bootstrap = []string{dn.Addrs()[0].String()}
	mallory, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := mallory.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mallory.Close() })
	forged := simulations.AnswerWithErrors(mallory.Host(), id, func(n int64) trust.Code {
		return trust.Code(fmt.Sprintf("made_up_%d_%s", n, strings.Repeat("x", 4<<10)))
	})

	call := func() error {
		return apiCall(a, "POST", "/v1/send", map[string]any{"to": id.Public().String(), "action": "read:logs", "timeout": "5s"}, io.Discard)
	}
	if err := simulations.WaitFor(15*time.Second, func() error {
		err := call()
		if err == nil || forged.Load() == 0 {
			return fmt.Errorf("no forged reply yet (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rejected := func(p string) float64 {
		return metricSum(p, "meshagent_decisions_total", `direction="out"`, `kind="request"`, `decision="reject"`)
	}
	before := scrape(t, a)
	const calls = 300
	for i := range calls {
		if err := call(); err == nil {
			t.Fatalf("call %d succeeded", i)
		}
	}
	after := scrape(t, a)
	series := func(p string) int { return strings.Count(p, "\nmeshagent_decisions_total{") }
	t.Logf("/metrics: %d -> %d bytes, decision series %d -> %d", len(before), len(after), series(before), series(after))
	if strings.Contains(after, "made_up_") {
		t.Fatal("a made-up code became a label value")
	}
	if got := rejected(after) - rejected(before); got != calls {
		t.Fatalf("%v rejected calls counted, want %d", got, calls)
	}
	// At most one new reason (a call that failed otherwise, unavailable
	// under load, say): one series of meshagent_decisions_total and one of
	// meshagent_call_duration_seconds (its buckets: about 2.4 KB).
	if grew := len(after) - len(before); series(after)-series(before) > 1 || grew > 4<<10 {
		t.Fatalf("/metrics grew by %d bytes and %d series", grew, series(after)-series(before))
	}
}

// Every reason code the trust, protocol and node packages define is a
// label value the daemon knows, so that honest reasons are never counted
// as "other".
func TestBoundedLabelsKnowEveryCode(t *testing.T) {
	found := 0
	for _, pkg := range []string{"trust", "protocol", "node"} {
		files, err := filepath.Glob(filepath.Join("..", "..", pkg, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range af.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok || g.Tok != token.CONST {
					continue
				}
				for _, s := range g.Specs {
					vs := s.(*ast.ValueSpec)
					if !isCodeType(vs.Type) {
						continue
					}
					for _, v := range vs.Values {
						lit, ok := v.(*ast.BasicLit)
						if !ok || lit.Kind != token.STRING {
							continue
						}
						code, _ := strconv.Unquote(lit.Value)
						found++
						if !knownReasons[code] {
							t.Errorf("%s: code %q is not in knownReasons (metrics.go): it would be counted as %q", f, code, otherLabel)
						}
					}
				}
			}
		}
	}
	if found < 20 {
		t.Fatalf("found only %d codes: is the parser looking in the right place?", found)
	}
}

// isCodeType reports whether e is Code or trust.Code.
func isCodeType(e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name == "Code"
	case *ast.SelectorExpr:
		id, ok := x.X.(*ast.Ident)
		return ok && id.Name == "trust" && x.Sel.Name == "Code"
	}
	return false
}
