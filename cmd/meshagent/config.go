package main

import (
	"fmt"
	"os"
	"path/filepath"
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

func loadFileConfig(home string) (*fileConfig, error) {
	data, err := os.ReadFile(filepath.Join(home, configFile))
	if err != nil {
		return nil, err
	}
	var c fileConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", configFile, err)
	}
	return &c, nil
}

const defaultConfig = `# meshagent agent configuration. Flags of 'meshagent run' override these
# settings; list flags (--listen, --bootstrap, --anchor, --token) replace the
# list from this file.

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
audit_log: audit.log
audit_log_max_bytes: 67108864 # 64 MiB

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

# Prometheus metrics are served on the local API at /metrics; set host:port
# to serve them over TCP too.
# metrics_listen: 127.0.0.1:9464
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
