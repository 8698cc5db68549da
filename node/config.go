package node

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// Config configures a Node. Start from DefaultConfig or LocalConfig.
type Config struct {
	// Identity is the agent's private key; it is also the libp2p host key,
	// so the TLS handshake proves it. Required.
	Identity *trust.Identity
	// Credential is the agent's certificate, presented at admission.
	// Required.
	Credential *trust.Credential
	// Policy says which anchors to trust and the limits to enforce.
	// Policy.Anchors is required.
	Policy trust.Policy
	// Tokens are the capability tokens this agent holds. Call and Publish
	// attach the first one whose leaf grants the action to this agent.
	Tokens []*trust.Token
	// ListenAddrs are multiaddrs to listen on (TCP and /quic-v1 only).
	ListenAddrs []string
	// AdmissionTimeout is how long a new connection has to complete the
	// credential exchange before it is closed. Default 5 s.
	AdmissionTimeout time.Duration
	// CallTimeout bounds one RPC (stream open, request, reply) when the
	// caller's context has no earlier deadline. Default 10 s.
	CallTimeout time.Duration
	// HandlerTimeout bounds one handler run on the server side. Default 10 s.
	HandlerTimeout time.Duration
	// MaxConcurrentCalls bounds the handlers this node runs at once, for
	// every action and caller together. A call accepted past it is
	// answered busy at once, with a short retry-after (Node.Call's error
	// then satisfies protocol.RetryAfter), and its handler does not run:
	// the node sheds load rather than hold streams and goroutines for
	// calls queued without end. Default 512: half the 1 024 inbound RPC
	// streams a node accepts, so that past the bound a caller still gets
	// the busy answer rather than a reset stream.
	MaxConcurrentCalls int
	// MaxEnvelopeSize bounds every frame read from a stream or pubsub
	// message. Default 256 KiB.
	MaxEnvelopeSize int
	// ReplayWindow is the accepted clock difference and replay window.
	// Default 5 minutes.
	ReplayWindow time.Duration
	// Audit receives one JSON line per inbound and outbound call or
	// message. nil discards the audit log.
	Audit io.Writer
	// Clock returns the current time; nil means time.Now. Tests set it to
	// skew one node's clock.
	Clock func() time.Time

	// HeartbeatInterval is how often this agent signs a heartbeat and
	// sends it to its beat neighbours. Default 30 s; milliseconds in tests.
	HeartbeatInterval time.Duration
	// SuspectMissed is how many heartbeat intervals of silence make an
	// agent suspect. Default 2.
	SuspectMissed int
	// DeadAfter is how long without a heartbeat before an agent is dead:
	// its connections are closed and it is refused until it heartbeats
	// again. Default 90 s (three heartbeats).
	DeadAfter time.Duration
	// BeatDegree is how many connected agents this node opens beat links
	// to; others open links to it too, so a node has about twice as many.
	// Every heartbeat is relayed over every link once. Default 3.
	BeatDegree int
	// Allowlist, when not empty, narrows the registry to these agents.
	Allowlist []trust.PublicKey
	// Bootstrap peers (multiaddrs ending in /p2p/PEERID) are connected at
	// start and reconnected with backoff whenever the connection drops.
	Bootstrap []string
	// Issuer, when set, makes this node an issuer: it renews the
	// credentials of agents that present a valid one. Any number of nodes
	// may be issuers.
	Issuer *trust.AnchorKey
	// RenewAfter is the fraction of its lifetime after which the node
	// renews its credential from any reachable issuer. Default 2/3.
	RenewAfter float64
	// OnCredential, when set, is called with every renewed credential (the
	// daemon writes it to disk). It must not block.
	OnCredential func(*trust.Credential)
	// OnRevocation, when set, is called with every newly applied
	// revocation, encoded (the daemon persists them). It must not block.
	OnRevocation func([]byte)
	// Revocations are encoded revocations to apply at start (the daemon
	// persists them across restarts).
	Revocations [][]byte
	// Prometheus, when set, receives libp2p's own metrics (swarm, resource
	// manager, identify...). nil disables them.
	Prometheus prometheus.Registerer
	// Logger receives the node's own log lines and the pubsub router's.
	// nil logs warnings and errors as text on stderr. (libp2p's own
	// loggers are not changed: gologshim sets where they go.)
	Logger *slog.Logger
	// MDNS finds and connects other agents on the LAN with multicast DNS,
	// under meshagent's own service name. Admission still applies.
	MDNS bool
}

// DefaultConfig returns the production defaults: listen on all interfaces
// on port 4001 over TCP and QUIC.
func DefaultConfig() Config {
	return Config{
		ListenAddrs:        []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"},
		AdmissionTimeout:   5 * time.Second,                 // credential exchange per connection
		CallTimeout:        10 * time.Second,                // one RPC, end to end
		HandlerTimeout:     10 * time.Second,                // one handler run
		MaxConcurrentCalls: 512,                             // handler runs at once; past them, busy
		MaxEnvelopeSize:    protocol.DefaultMaxEnvelopeSize, // 256 KiB per frame
		ReplayWindow:       protocol.DefaultWindow,          // ±5 minutes
		Policy:             trust.DefaultPolicy(),           // add anchors
		HeartbeatInterval:  30 * time.Second,                // one heartbeat per agent
		SuspectMissed:      2,                               // suspect after two missed heartbeats
		DeadAfter:          90 * time.Second,                // dead after three
		BeatDegree:         3,                               // beat links opened (about 6 in all)
		RenewAfter:         2.0 / 3,                         // renew the daily credential after 16 h
	}
}

// LocalConfig returns defaults for tests and simulations: loopback only, on
// random ports, with short timeouts and 250 ms heartbeats (dead after 3 s,
// so that a busy test machine does not make false verdicts; liveness tests
// set tighter values).
func LocalConfig() Config {
	c := DefaultConfig()
	c.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	c.AdmissionTimeout = 2 * time.Second
	c.CallTimeout = 5 * time.Second
	c.HandlerTimeout = 5 * time.Second
	c.HeartbeatInterval = 250 * time.Millisecond // fast enough to converge in a test
	c.DeadAfter = 3 * time.Second                // lenient: liveness tests set their own
	return c
}

func (c *Config) validate() error {
	switch {
	case c.Identity == nil:
		return fmt.Errorf("node: config: Identity is required")
	case c.Credential == nil:
		return fmt.Errorf("node: config: Credential is required")
	case len(c.Policy.Anchors) == 0:
		return fmt.Errorf("node: config: Policy.Anchors is required")
	case !c.Credential.Subject.Equal(c.Identity.Public()):
		return fmt.Errorf("node: config: the credential is for %s, not for this identity %s", c.Credential.Subject, c.Identity.Public())
	case c.AdmissionTimeout <= 0 || c.CallTimeout <= 0 || c.HandlerTimeout <= 0 || c.MaxEnvelopeSize <= 0 || c.ReplayWindow <= 0 ||
		c.MaxConcurrentCalls <= 0:
		return fmt.Errorf("node: config: timeouts, window, sizes and MaxConcurrentCalls must be positive (start from DefaultConfig)")
	case c.HeartbeatInterval <= 0 || c.DeadAfter <= c.HeartbeatInterval:
		return fmt.Errorf("node: config: HeartbeatInterval must be positive and DeadAfter longer than it")
	case c.BeatDegree <= 0:
		return fmt.Errorf("node: config: BeatDegree must be positive (start from DefaultConfig)")
	case c.RenewAfter <= 0 || c.RenewAfter >= 1:
		return fmt.Errorf("node: config: RenewAfter must be a fraction between 0 and 1")
	}
	return nil
}
