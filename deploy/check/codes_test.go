package check

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var codes struct {
	once sync.Once
	set  map[string]bool
	err  error
}

// reasonCodes are the reason codes meshagent defines: the string
// constants of type Code in trust/ and protocol/, read from the source
// (this module does not import the product, so that its dependencies
// never need tidying here).
func reasonCodes(t *testing.T) map[string]bool {
	t.Helper()
	codes.once.Do(func() {
		codes.set = map[string]bool{}
		for _, pkg := range []string{"trust", "protocol"} {
			files, err := filepath.Glob(filepath.Join("..", "..", pkg, "*.go"))
			if err != nil {
				codes.err = err
				return
			}
			for _, f := range files {
				if strings.HasSuffix(f, "_test.go") {
					continue
				}
				af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
				if err != nil {
					codes.err = err
					return
				}
				for _, d := range af.Decls {
					g, ok := d.(*ast.GenDecl)
					if !ok || g.Tok != token.CONST {
						continue
					}
					for _, s := range g.Specs {
						vs := s.(*ast.ValueSpec)
						if !isCode(vs.Type) {
							continue
						}
						for _, v := range vs.Values {
							if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
								c, _ := strconv.Unquote(lit.Value)
								codes.set[c] = true
							}
						}
					}
				}
			}
		}
	})
	if codes.err != nil {
		t.Fatal(codes.err)
	}
	if len(codes.set) < 20 {
		t.Fatalf("only %d reason codes found in trust/ and protocol/", len(codes.set))
	}
	return codes.set
}

// isCode reports whether e is Code or trust.Code.
func isCode(e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name == "Code"
	case *ast.SelectorExpr:
		id, ok := x.X.(*ast.Ident)
		return ok && id.Name == "trust" && x.Sel.Name == "Code"
	}
	return false
}
