package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/meshagent/meshagent/trust"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// fileConfig is meshagent.yaml in an agent's home.
type fileConfig struct {
	Name       string   `yaml:"name"`
	Listen     []string `yaml:"listen"`
	Bootstrap  []string `yaml:"bootstrap"`
	Anchors    []string `yaml:"anchors"`
	Credential string   `yaml:"credential"`
	Tokens     []string `yaml:"tokens"`
	AuditLog   string   `yaml:"audit_log"`
	APISocket  string   `yaml:"api_socket"`
	// AuditLogMaxBytes is the size past which the audit log is rotated
	// (to audit_log.1, keeping auditLogKeep old files). Default 64 MiB.
	AuditLogMaxBytes int64 `yaml:"audit_log_max_bytes"`
	// AuditCheckpointEvery and AuditCheckpointLines: the daemon signs a
	// checkpoint of its audit log's hash chain at least this often while
	// lines come, and every this many lines (defaults 1m and 1000).
	AuditCheckpointEvery time.Duration `yaml:"audit_checkpoint_every"`
	AuditCheckpointLines int           `yaml:"audit_checkpoint_lines"`
	// Liveness: heartbeat interval and the silence after which an agent is
	// dead (defaults 30s and 90s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	DeadAfter time.Duration `yaml:"dead_after"`
	// IssuerKey, when set, is an anchor key file: this daemon then renews
	// other agents' credentials (and its own).
	IssuerKey string `yaml:"issuer_key"`
	// Allowlist narrows the registry to these peer IDs.
	Allowlist []string `yaml:"allowlist"`
	// MDNS finds other agents on the LAN (service name "meshagent").
	MDNS bool `yaml:"mdns"`
	// MetricsListen, when set (host:port), serves /metrics over HTTP there
	// too; the local API always serves it.
	MetricsListen string `yaml:"metrics_listen"`
	// Timeouts are per-action call and handler timeouts (longcalls.go).
	Timeouts []actionTimeout `yaml:"timeouts"`
	// OTLPEndpoint, when set (http://HOST:PORT), is where the daemon
	// exports a span per call over OTLP/HTTP (tracing.go).
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Console, when set (a loopback host:port), serves the read-only web
	// console there (console.go).
	Console string `yaml:"console"`

	// callFlags and handlerFlags are --call-timeout and --handler-timeout.
	callFlags, handlerFlags []string
}

func inHome(home, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(home, p)
}

// apiSocketPath is where the local API of the agent at home listens.
func apiSocketPath(home string, fc *fileConfig) string {
	if fc.APISocket == "" {
		return filepath.Join(home, "api.sock")
	}
	return inHome(home, fc.APISocket)
}

// loadFileConfig reads meshagent.yaml in home. It is strict: a field it
// does not know (a typo, a setting from another version) is an error that
// names it, and so is a second YAML document; each error is one line that
// names the file.
func loadFileConfig(home string) (*fileConfig, error) {
	path := filepath.Join(home, configFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := parseFileConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %v", path, err)
	}
	return c, nil
}

// parseFileConfig decodes a config, refusing unknown fields. An empty one
// (or one of comments only) is the zero config.
func parseFileConfig(data []byte) (*fileConfig, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c fileConfig
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(err)
	}
	var more yaml.Node
	switch err := dec.Decode(&more); {
	case err == nil:
		return nil, fmt.Errorf("line %d: a second YAML document: the config is one", more.Line)
	case !errors.Is(err, io.EOF):
		return nil, yamlError(err)
	}
	return &c, nil
}

// yamlUnknownField is how yaml.v3 says that a field is unknown.
var yamlUnknownField = regexp.MustCompile(`^(line \d+): field (.+) not found in type \S+$`)

// yamlError is err from the YAML decoder in one line, in the config's
// words: "line 3: unknown field "typo_field"", not Go type names.
func yamlError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return errors.New(strings.ReplaceAll(strings.TrimPrefix(err.Error(), "yaml: "), "\n", " "))
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		if g := yamlUnknownField.FindStringSubmatch(m); g != nil {
			m = fmt.Sprintf("%s: unknown field %q", g[1], g[2])
		}
		msgs[i] = strings.ReplaceAll(m, "main.fileConfig", "the config's fields")
	}
	return errors.New(strings.Join(msgs, "; "))
}

const defaultConfig = `# meshagent agent configuration. Flags of 'meshagent run' override these
# settings; list flags (--listen, --bootstrap, --anchor, --token) replace the
# list from this file. Every field is below: one this version does not know
# (a misspelt one, say) is refused with its line.

# The agent's name, as in its credential.
name: %s

# Addresses to listen on (TCP and QUIC, TLS 1.3 only).
listen:
  - /ip4/127.0.0.1/tcp/0
  - /ip4/127.0.0.1/udp/0/quic-v1

# Peers to connect to at start: full multiaddrs ending in /p2p/PEERID.
bootstrap: []

# Trusted anchor IDs (from 'meshagent ca init'). Anything that does not chain
# to one of them is rejected.
anchors: []

# This agent's credential (from 'meshagent ca issue'), relative to this
# directory or absolute.
credential: credential.pem

# Capability tokens this agent holds (from 'meshagent token issue' or
# 'meshagent token delegate'); the right one is attached to each call.
tokens: []

# Audit log: one JSON line per call or message, accepted or rejected.
# Past audit_log_max_bytes it is renamed audit.log.1 (the older ones shift to
# .2 and .3; the oldest beyond is deleted) and a new one is started.
# Each line carries the hash of the one before; the daemon signs the chain
# head (a checkpoint) at least every audit_checkpoint_every while lines come,
# every audit_checkpoint_lines lines, and at shutdown. SIGHUP reopens the
# file (logrotate). Check it with 'meshagent audit verify'.
audit_log: audit.log
audit_log_max_bytes: 67108864 # 64 MiB
audit_checkpoint_every: 1m
audit_checkpoint_lines: 1000

# Local API: HTTP + JSON on this Unix socket (mode 0600), relative to this
# directory or absolute. Its directory must be owned by this user and
# writable by no one else.
api_socket: api.sock

# Liveness: one signed heartbeat per interval; an agent silent for
# dead_after is dead (its calls and messages are refused until it heartbeats
# again). Flags: --heartbeat, --dead-after.
heartbeat: 30s
dead_after: 90s

# An anchor key file makes this daemon an issuer: it renews the credentials
# of agents that present a valid one. Any number of daemons may be issuers.
# issuer_key: /path/to/ca/anchor.key

# Only these peer IDs may join, even with a valid credential (empty: any).
allowlist: []

# Find other agents on the LAN with multicast DNS (service "meshagent").
mdns: false

# Per-action timeouts, up to 1h each (the defaults are 10s): call is how long
# this agent's calls of the action wait when /v1/send gives no timeout;
# handler is how long its local handler (meshagent handle, /v1/handle) may
# take. Flags: --call-timeout ACTION=15m, --handler-timeout ACTION=15m.
timeouts: []
#  - action: summarize:docs
#    call: 15m
#    handler: 15m

# Prometheus metrics are served on the local API at /metrics; set host:port
# to serve them over TCP too.
# metrics_listen: 127.0.0.1:9464

# OpenTelemetry: an OTLP/HTTP endpoint (a collector, Jaeger, Tempo...) to
# export one span per call to, continuing the caller's W3C trace. Spans
# carry the action, peer IDs, decision, reason code and correlation ID;
# never bodies, keys or tokens. Unset: nothing is exported.
# otlp_endpoint: http://127.0.0.1:4318

# A read-only web console (agents, advertised actions, a live tail of the
# audit log, a token inspector, revocations) on a loopback address only.
# The daemon prints its URL, with a fresh access token, at each start.
# Flag: --console.
# console: 127.0.0.1:7777
`

func writeDefaultConfig(path, name string) error {
	return trust.WriteFileExclusive(path, fmt.Appendf(nil, defaultConfig, name), 0o600)
}

func addDaemonCommands(root *cobra.Command) {
	root.AddCommand(newMovedDemoCmd(), newRunCmd())
	root.AddCommand(newClientCommands()...)
	root.AddCommand(newStreamCommands()...)
}

// demoMoved is what `meshagent demo` says: the demo builds its mesh with
// the simulations package, which the daemon binary does not carry.
const demoMoved = "the demo moved: make demo / go run ./cmd/meshagent-demo"

// newMovedDemoCmd is the former demo subcommand, hidden from the usage: it
// says where the demo went, as a usage error (exit 2).
func newMovedDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "demo",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return usagef(demoMoved) },
	}
}
