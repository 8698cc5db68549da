package main

import (
	"fmt"

	"github.com/meshagent/meshagent/trust"
	"github.com/spf13/cobra"
)

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
