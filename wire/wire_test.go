package wire

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// pinned is every constant of the package with its value written out. The
// values are part of the protocol: a test that fails here means a change
// that would split the mesh or void every signature made so far. Append a
// new constant here and in wire.go; never edit a line.
var pinned = map[string]string{
	"ProtocolAdmission":   "/meshagent/admission/1.0.0",
	"ProtocolRPC":         "/meshagent/rpc/1.0.0",
	"ProtocolRPC2":        "/meshagent/rpc/2.0.0",
	"ProtocolSync":        "/meshagent/sync/1.0.0",
	"ProtocolRevocations": "/meshagent/revocations/1.0.0",
	"ProtocolLeave":       "/meshagent/leave/1.0.0",
	"ProtocolBeat":        "/meshagent/beat/1.0.0",
	"ProtocolRenew":       "/meshagent/renew/1.0.0",
	"ProtocolAdvert":      "/meshagent/advert/1.0.0",

	"TopicRegistry":    "meshagent/v1/registry",
	"TopicRevocations": "meshagent/v1/revocations",

	"DomainCredential": "meshagent/v1/credential\x00",
	"DomainLink":       "meshagent/v1/link\x00",
	"DomainRevocation": "meshagent/v1/revocation\x00",
	"DomainEnvelope":   "meshagent/v1/envelope\x00",
	"DomainAnnounce":   "meshagent/v1/announce\x00",
	"DomainLeave":      "meshagent/v1/leave\x00",
	"DomainBeat":       "meshagent/v1/beat\x00",
	"DomainAdvert":     "meshagent/v1/advert\x00",
	"DomainRoot":       "meshagent/v1/root\x00",
	"DomainLinkID":     "meshagent/v1/link-id\x00",

	"DomainAuditCheckpoint": "meshagent/v1/audit-checkpoint\x00",
	"DomainAuditLine":       "meshagent/v1/audit-line\x00",
}

// actual is every constant by name, as compiled.
var actual = map[string]string{
	"ProtocolAdmission":   ProtocolAdmission,
	"ProtocolRPC":         ProtocolRPC,
	"ProtocolRPC2":        ProtocolRPC2,
	"ProtocolSync":        ProtocolSync,
	"ProtocolRevocations": ProtocolRevocations,
	"ProtocolLeave":       ProtocolLeave,
	"ProtocolBeat":        ProtocolBeat,
	"ProtocolRenew":       ProtocolRenew,
	"ProtocolAdvert":      ProtocolAdvert,

	"TopicRegistry":    TopicRegistry,
	"TopicRevocations": TopicRevocations,

	"DomainCredential": DomainCredential,
	"DomainLink":       DomainLink,
	"DomainRevocation": DomainRevocation,
	"DomainEnvelope":   DomainEnvelope,
	"DomainAnnounce":   DomainAnnounce,
	"DomainLeave":      DomainLeave,
	"DomainBeat":       DomainBeat,
	"DomainAdvert":     DomainAdvert,
	"DomainRoot":       DomainRoot,
	"DomainLinkID":     DomainLinkID,

	"DomainAuditCheckpoint": DomainAuditCheckpoint,
	"DomainAuditLine":       DomainAuditLine,
}

// declared returns the names of the exported constants declared in the
// package's source, so that a constant appended to wire.go without a
// pinned value fails the test.
func declared(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok {
				continue
			}
			if g.Tok == token.VAR {
				t.Errorf("%s declares variables: the package holds constants only", name)
			}
			if g.Tok != token.CONST {
				continue
			}
			for _, s := range g.Specs {
				for _, n := range s.(*ast.ValueSpec).Names {
					if n.IsExported() {
						names = append(names, n.Name)
					}
				}
			}
		}
	}
	return names
}

func TestValuesArePinned(t *testing.T) {
	t.Parallel()
	names := declared(t)
	if len(names) != len(pinned) || len(actual) != len(pinned) {
		t.Errorf("%d constants declared, %d pinned, %d compared: pin every constant", len(names), len(pinned), len(actual))
	}
	for _, n := range names {
		want, ok := pinned[n]
		if !ok {
			t.Errorf("%s has no pinned value", n)
			continue
		}
		if got, ok := actual[n]; !ok {
			t.Errorf("%s is not compared with its pinned value", n)
		} else if got != want {
			t.Errorf("%s = %q, pinned %q: values are part of the protocol and never change", n, got, want)
		}
	}
}

func TestValuesAreDistinct(t *testing.T) {
	t.Parallel()
	seen := map[string]string{}
	for n, v := range actual {
		if other, ok := seen[v]; ok {
			t.Errorf("%s and %s are both %q", n, other, v)
		}
		seen[v] = n
	}
}

var (
	protocolID = regexp.MustCompile(`^/meshagent/[a-z]+/\d+\.\d+\.\d+$`)
	topic      = regexp.MustCompile(`^meshagent/v\d+/[a-z]+$`)
)

func TestShapes(t *testing.T) {
	t.Parallel()
	var domains []string
	for n, v := range actual {
		switch {
		case strings.HasPrefix(n, "Protocol"):
			if !protocolID.MatchString(v) {
				t.Errorf("%s = %q does not match %s", n, v, protocolID)
			}
		case strings.HasPrefix(n, "Topic"):
			if !topic.MatchString(v) {
				t.Errorf("%s = %q does not match %s", n, v, topic)
			}
		case strings.HasPrefix(n, "Domain"):
			if !strings.HasSuffix(v, "\x00") || strings.Count(v, "\x00") != 1 {
				t.Errorf("%s = %q: a domain ends in its only NUL byte", n, v)
			}
			domains = append(domains, v)
		default:
			t.Errorf("%s: a constant here is a Protocol, a Topic or a Domain", n)
		}
	}
	// NUL-terminated, so no domain is a prefix of another: the bytes a
	// signature covers name exactly one domain.
	for _, a := range domains {
		for _, b := range domains {
			if a != b && strings.HasPrefix(b, a) {
				t.Errorf("domain %q is a prefix of %q", a, b)
			}
		}
	}
}
