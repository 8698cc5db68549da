// Command coupling measures how much the files of one Go package depend on
// each other: how many pairs of its non-test .go files "import each other".
//
// Usage:
//
//	go run ./internal/tools/coupling [-v] [-tags meshsim] [dir]
//
// dir is a package directory, ./node by default. The package is measured
// twice: with the default build context (the files a production build
// compiles) and with the build tag meshsim added (the files the tests and
// simulations compile). The two are reported separately, not as a union:
// files behind opposite constraints (node/sim_on.go and node/sim_off.go)
// declare the same names, so a union would be no package at all. -tags
// replaces meshsim by other tags, comma-separated.
//
// Definitions, resolved by name within the package only (no type
// checking, so that the tool needs nothing but the source):
//
//   - A file declares the top-level identifiers of its funcs, types, vars
//     and consts, and its methods, each named by receiver type and name
//     (Node.record).
//   - File A uses an identifier of file B (A ≠ B) when A refers to a
//     top-level func, type, var or const declared in B (an identifier that
//     go/parser leaves unresolved in A, so a local variable of the same
//     name does not count), or when A has a selector x.M where M is the
//     name of a method declared in B, whatever x is, except a package
//     name imported by A (gate.New is no method of this package). A
//     method name declared in several files counts for each of them, so
//     method uses are an upper bound. One narrowing: when x is the
//     receiver of the enclosing method, of type T, x.M counts only as a
//     use of the method T.M (c.Credential in a method of Config is a
//     field, not Node.Credential). Keys of composite literals
//     (Deps{Clock: ...}) are field names and do not count.
//   - A uses B when it uses at least one identifier of B; A and B import
//     each other when A uses B and B uses A.
//
// The report gives, for each build context: the files, the pairs of files
// (n·(n−1)/2), how many of them import each other, and how many ordered
// pairs (A, B) there are with A using B. -v lists the files each file
// uses, and the mutual pairs.
//
// To compare with an older revision, extract its directory first:
//
//	mkdir -p /tmp/old && git archive 07c237e node | tar -x -C /tmp/old
//	go run ./internal/tools/coupling /tmp/old/node
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

func main() {
	verbose := flag.Bool("v", false, "list, for each file, the files it uses, and the mutual pairs")
	tags := flag.String("tags", "meshsim", "build tags of the second measurement, comma-separated")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: coupling [-v] [-tags t1,t2] [dir]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	dir := "./node"
	switch flag.NArg() {
	case 0:
	case 1:
		dir = flag.Arg(0)
	default:
		flag.Usage()
		os.Exit(2)
	}
	var extra []string
	for _, t := range strings.Split(*tags, ",") {
		if t = strings.TrimSpace(t); t != "" {
			extra = append(extra, t)
		}
	}
	contexts := []struct {
		name string
		tags []string
	}{{"default build context", nil}, {"build tags " + strings.Join(extra, ","), extra}}
	fmt.Printf("package directory %s\n", dir)
	for _, c := range contexts {
		r, err := measure(dir, c.tags)
		if err != nil {
			fmt.Fprintf(os.Stderr, "coupling: %s: %v\n", c.name, err)
			os.Exit(1)
		}
		fmt.Printf("\n%s: %d files\n", c.name, len(r.files))
		fmt.Printf("  %d of %d file pairs import each other\n", len(r.mutual), r.pairs())
		fmt.Printf("  %d of %d ordered pairs (A, B) where A uses B\n", r.ordered(), 2*r.pairs())
		if *verbose {
			r.print()
		}
	}
}

// result is one measurement: uses[a][b] is true when file a uses file b.
type result struct {
	files  []string
	uses   map[string]map[string]bool
	mutual [][2]string
}

func (r *result) pairs() int { return len(r.files) * (len(r.files) - 1) / 2 }

func (r *result) ordered() int {
	n := 0
	for _, m := range r.uses {
		n += len(m)
	}
	return n
}

func (r *result) print() {
	for _, a := range r.files {
		var bs []string
		for b := range r.uses[a] {
			bs = append(bs, b)
		}
		sort.Strings(bs)
		fmt.Printf("  %s uses %d: %s\n", a, len(bs), strings.Join(bs, " "))
	}
	fmt.Printf("  mutual pairs:\n")
	for _, p := range r.mutual {
		fmt.Printf("    %s <-> %s\n", p[0], p[1])
	}
}

// measure parses the non-test files of dir that the default build context,
// with tags added, compiles, and finds which use which.
func measure(dir string, tags []string) (*result, error) {
	ctxt := build.Default
	ctxt.BuildTags = append(append([]string(nil), ctxt.BuildTags...), tags...)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	parsed := map[string]*ast.File{}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		ok, err := ctxt.MatchFile(dir, name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, 0)
		if err != nil {
			return nil, err
		}
		parsed[name] = f
		names = append(names, name)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no Go files in %s", dir)
	}
	sort.Strings(names)

	// Who declares what: plain identifiers and method names.
	idents := map[string][]string{}  // name → files declaring it at top level
	methods := map[string][]string{} // method name → files declaring a method of that name
	typed := map[string][]string{}   // T.M → files declaring the method M of T
	recvs := map[*ast.Field]string{} // a method's receiver → its type name
	for _, name := range names {
		for _, d := range parsed[name].Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Recv != nil && len(d.Recv.List) > 0 {
					methods[d.Name.Name] = append(methods[d.Name.Name], name)
					t := recvType(d.Recv.List[0].Type)
					typed[t+"."+d.Name.Name] = append(typed[t+"."+d.Name.Name], name)
					recvs[d.Recv.List[0]] = t
				} else if d.Name.Name != "init" {
					idents[d.Name.Name] = append(idents[d.Name.Name], name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						idents[s.Name.Name] = append(idents[s.Name.Name], name)
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.Name != "_" {
								idents[n.Name] = append(idents[n.Name], name)
							}
						}
					}
				}
			}
		}
	}

	r := &result{files: names, uses: map[string]map[string]bool{}}
	use := func(a, b string) {
		if a == b {
			return
		}
		if r.uses[a] == nil {
			r.uses[a] = map[string]bool{}
		}
		r.uses[a][b] = true
	}
	for _, a := range names {
		f := parsed[a]
		// Identifiers the parser could not resolve within the file: other
		// files' top-level declarations, imports and the universe.
		for _, id := range f.Unresolved {
			for _, b := range idents[id.Name] {
				use(a, b)
			}
		}
		imported := importNames(f)
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok {
				if x.Obj == nil && imported[x.Name] {
					return true // pkg.Name: not a method of this package
				}
				if x.Obj != nil {
					if f, ok := x.Obj.Decl.(*ast.Field); ok {
						if t, ok := recvs[f]; ok { // x is a receiver of type t
							for _, b := range typed[t+"."+sel.Sel.Name] {
								use(a, b)
							}
							return true
						}
					}
				}
			}
			for _, b := range methods[sel.Sel.Name] {
				use(a, b)
			}
			return true
		})
	}
	for i, a := range names {
		for _, b := range names[i+1:] {
			if r.uses[a][b] && r.uses[b][a] {
				r.mutual = append(r.mutual, [2]string{a, b})
			}
		}
	}
	return r, nil
}

// importNames returns the names f's imports are known by (dot and blank
// imports aside).
func importNames(f *ast.File) map[string]bool {
	out := map[string]bool{}
	for _, s := range f.Imports {
		path, err := strconv.Unquote(s.Path.Value)
		if err != nil {
			continue
		}
		name := ""
		if s.Name != nil {
			name = s.Name.Name
		} else {
			name = guessName(path)
		}
		if name != "_" && name != "." {
			out[name] = true
		}
	}
	return out
}

// guessName is the package name an import path is used by when it is not
// renamed: its last element, without a major-version suffix or a go-
// prefix (github.com/libp2p/go-msgio is msgio), as Go's own tools guess it.
func guessName(path string) string {
	elems := strings.Split(path, "/")
	last := elems[len(elems)-1]
	if len(elems) > 1 && len(last) > 1 && last[0] == 'v' && strings.Trim(last[1:], "0123456789") == "" {
		last = elems[len(elems)-2]
	}
	last = strings.TrimPrefix(last, "go-")
	if i := strings.IndexAny(last, ".-"); i >= 0 {
		last = last[:i]
	}
	return last
}

// recvType is the name of a receiver's type: T for T, *T, T[P] and *T[P].
func recvType(e ast.Expr) string {
	for {
		switch x := e.(type) {
		case *ast.StarExpr:
			e = x.X
		case *ast.ParenExpr:
			e = x.X
		case *ast.IndexExpr:
			e = x.X
		case *ast.IndexListExpr:
			e = x.X
		case *ast.Ident:
			return x.Name
		default:
			return ""
		}
	}
}
