package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

func newRunCmd() *cobra.Command {
	var home, credential, issuerKey, console string
	var listen, bootstrap, anchors, tokens []string
	var heartbeat, deadAfter time.Duration
	var callTimeouts, handlerTimeouts []string
	cmd := &cobra.Command{
		Use:   "run --home DIR",
		Short: "Run the agent daemon until SIGINT or SIGTERM, with its local API on a Unix socket",
		Args:  exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			fc, err := loadFileConfig(home)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("listen") {
				fc.Listen = listen
			}
			if f.Changed("bootstrap") {
				fc.Bootstrap = bootstrap
			}
			if f.Changed("anchor") {
				fc.Anchors = anchors
			}
			if f.Changed("token") {
				fc.Tokens = tokens
			}
			if f.Changed("credential") {
				fc.Credential = credential
			}
			if f.Changed("heartbeat") {
				fc.Heartbeat = heartbeat
			}
			if f.Changed("dead-after") {
				fc.DeadAfter = deadAfter
			}
			if f.Changed("issuer-key") {
				fc.IssuerKey = issuerKey
			}
			if f.Changed("console") {
				fc.Console = console
			}
			fc.callFlags, fc.handlerFlags = callTimeouts, handlerTimeouts
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serveDaemon(ctx, home, fc, nil, cmd.ErrOrStderr())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&home, "home", "", "agent home directory")
	f.StringSliceVar(&listen, "listen", nil, "multiaddr to listen on (repeatable)")
	f.StringSliceVar(&bootstrap, "bootstrap", nil, "peer to connect to: MULTIADDR/p2p/PEERID (repeatable)")
	f.StringSliceVar(&anchors, "anchor", nil, "trusted anchor ID (repeatable)")
	f.StringVar(&credential, "credential", "", "credential file")
	f.StringSliceVar(&tokens, "token", nil, "token file (repeatable)")
	f.DurationVar(&heartbeat, "heartbeat", 0, "heartbeat interval (default 30s)")
	f.DurationVar(&deadAfter, "dead-after", 0, "silence after which an agent is dead (default 90s)")
	f.StringVar(&issuerKey, "issuer-key", "", "anchor key file: make this daemon an issuer")
	f.StringVar(&console, "console", "", "serve the read-only web console on this loopback HOST:PORT (docs/console.md)")
	f.StringArrayVar(&callTimeouts, "call-timeout", nil, "ACTION=DURATION: how long calls of ACTION wait when /v1/send gives no timeout (repeatable; up to 1h)")
	f.StringArrayVar(&handlerTimeouts, "handler-timeout", nil, "ACTION=DURATION: how long the local handler of ACTION may take (repeatable; up to 1h)")
	required(cmd, "home")
	return cmd
}

// testHookNodeConfig, when set by a test, adjusts the node's config (its
// handler timeout, say) before the node is built.
var testHookNodeConfig func(*node.Config)

// serveDaemon runs the agent at home as fc says until ctx ends: it checks
// the config (planDaemon), builds and starts the node, then serves the local
// API on its socket. Once the socket listens it says so on logw in one line
// (upLine) and calls ready, if not nil. What the daemon does not stop for (a persisted revocation it
// drops, a renewed credential it could not save) is said on logw, one line
// each.
func serveDaemon(ctx context.Context, home string, fc *fileConfig, ready func(*node.Node), logw io.Writer) error {
	// Whatever serves until ctx ends stops too when the daemon fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	plan, err := planDaemon(home, fc, logw)
	if err != nil {
		return err
	}
	defer plan.close()
	cfg := plan.node
	if testHookNodeConfig != nil {
		testHookNodeConfig(&cfg)
	}
	var con *consoleServer
	if fc.Console != "" {
		if con, err = newConsole(fc.Console, cfg.Policy); err != nil {
			return fmt.Errorf("config: console: %v", err)
		}
		defer con.close()
		cfg.OnRevocation = con.revs.watch(cfg.OnRevocation)
	}
	metrics := newDaemonMetrics()
	cfg.Prometheus = metrics.reg
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	if con != nil {
		con.attach(n)
		metrics.console = con
	}
	if plan.otlp != nil {
		if metrics.tracer, err = newCallTracer(plan.otlp, n.ID().String(), n.Credential().Name); err != nil {
			return err
		}
		defer metrics.tracer.shutdown()
	}
	metrics.watch(n)
	if fc.MetricsListen != "" {
		if err := serveMetrics(ctx, fc.MetricsListen, metrics, n); err != nil {
			return fmt.Errorf("config: metrics_listen: %v", err)
		}
	}
	_ = n.Handle(pingAction, func(context.Context, *node.Request) ([]byte, error) {
		return json.Marshal(map[string]string{"pong": n.Credential().Name})
	})
	if err := n.Start(ctx); err != nil {
		return err
	}
	reopenOnHangup(ctx, plan.audit, logw)
	api, err := newAPIServer(plan.sock, n, metrics, plan.timeouts)
	if err != nil {
		return fmt.Errorf("api socket: %v", err)
	}
	fmt.Fprintln(logw, upLine(n, plan.sock))
	if con != nil {
		con.start(ctx)
		fmt.Fprintln(logw, con.upLine())
	}
	if ready != nil {
		ready(n)
	}
	return api.serve(ctx)
}

// upLine is the one line the daemon says once it is up: who it is, the
// addresses peers reach it at (each ends in /p2p/PEERID, as --bootstrap
// takes them) and the socket of its local API.
func upLine(n *node.Node, sock string) string {
	addrs := make([]string, 0, len(n.Addrs()))
	for _, a := range n.Addrs() {
		addrs = append(addrs, a.String())
	}
	return fmt.Sprintf("meshagent: up: peer %s listening on %s; local API on %s", n.ID(), strings.Join(addrs, " "), sock)
}

// daemonPlan is an agent's config, checked, as what the daemon runs: the
// node's config and the path of the local API socket.
type daemonPlan struct {
	node     node.Config
	sock     string
	timeouts timeouts    // per action
	audit    *auditChain // nil without audit_log; open until close
	otlp     *url.URL    // nil without otlp_endpoint
}

func (p *daemonPlan) close() {
	if p.audit != nil {
		p.audit.Close()
	}
}

// planDaemon checks every field of fc, for the agent at home, before
// anything starts, and returns what the daemon runs. The only thing it
// opens is the audit log (the last step, so that nothing is left open on an
// error); it reads the persisted revocations, saying on logw what it drops.
func planDaemon(home string, fc *fileConfig, logw io.Writer) (*daemonPlan, error) {
	id, err := trust.LoadIdentity(filepath.Join(home, identityFile))
	if err != nil {
		return nil, err
	}
	cfg := node.DefaultConfig()
	cfg.Identity = id
	// The node's warnings (a renewal overdue) go where the daemon's own
	// lines go; its routine lines do not repeat the daemon's.
	cfg.Logger = slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if len(fc.Listen) > 0 {
		cfg.ListenAddrs = fc.Listen
	}
	if len(fc.Anchors) == 0 {
		return nil, fmt.Errorf("config: anchors: at least one trusted anchor ID is required")
	}
	for _, a := range fc.Anchors {
		k, err := trust.ParsePublicKey(a)
		if err != nil {
			return nil, fmt.Errorf("config: anchors: %v", err)
		}
		cfg.Policy.Anchors = append(cfg.Policy.Anchors, k)
	}
	cb, err := readPEMFile(inHome(home, fc.Credential), trust.PEMCredential, trust.MaxCredentialSize)
	if err != nil {
		return nil, fmt.Errorf("config: credential: %v", err)
	}
	if cfg.Credential, err = trust.ParseCredential(cb); err != nil {
		return nil, fmt.Errorf("config: credential: %v", err)
	}
	for _, tf := range fc.Tokens {
		t, err := loadToken(inHome(home, tf))
		if err != nil {
			return nil, fmt.Errorf("config: tokens: %v", err)
		}
		if !t.Holder().Equal(id.Public()) {
			// Another agent's: no call could use it.
			fmt.Fprintf(logw, "meshagent: config: tokens: %s is held by %s, not by this agent (%s): not loaded\n", tf, t.Holder(), id.Public())
			continue
		}
		cfg.Tokens = append(cfg.Tokens, t)
	}
	if fc.Heartbeat != 0 {
		cfg.HeartbeatInterval = fc.Heartbeat
	}
	if fc.DeadAfter != 0 {
		cfg.DeadAfter = fc.DeadAfter
	}
	if cfg.HeartbeatInterval <= 0 || cfg.DeadAfter <= cfg.HeartbeatInterval {
		return nil, fmt.Errorf("config: dead_after (%s) must be longer than heartbeat (%s)", cfg.DeadAfter, cfg.HeartbeatInterval)
	}
	for _, a := range fc.Allowlist {
		k, err := trust.ParsePublicKey(a)
		if err != nil {
			return nil, fmt.Errorf("config: allowlist: %v", err)
		}
		cfg.Allowlist = append(cfg.Allowlist, k)
	}
	for _, b := range fc.Bootstrap {
		if _, err := peer.AddrInfoFromString(b); err != nil {
			return nil, fmt.Errorf("config: bootstrap: %q: %v", b, err)
		}
	}
	cfg.Bootstrap = fc.Bootstrap
	cfg.MDNS = fc.MDNS
	if fc.IssuerKey != "" {
		if cfg.Issuer, err = trust.LoadAnchorKey(inHome(home, fc.IssuerKey)); err != nil {
			return nil, fmt.Errorf("config: issuer_key: %v", err)
		}
	}
	sock := apiSocketPath(home, fc)
	if err := checkSocketDir(filepath.Dir(sock)); err != nil {
		return nil, fmt.Errorf("api socket: %v", err)
	}
	credPath := inHome(home, fc.Credential)
	cfg.OnCredential = func(c *trust.Credential) {
		if err := replaceFile(credPath, trust.EncodePEM(c.Bytes(), trust.PEMCredential)); err != nil {
			fmt.Fprintf(logw, "meshagent: saving renewed credential: %v\n", err)
		}
	}
	revDir := filepath.Join(home, "revocations")
	if cfg.Revocations, err = loadRevocations(revDir, cfg.Policy, time.Now(), logw); err != nil {
		return nil, fmt.Errorf("revocations: %v", err)
	}
	cfg.OnRevocation = func(raw []byte) {
		if err := saveRevocation(revDir, raw); err != nil {
			fmt.Fprintf(logw, "meshagent: saving revocation: %v\n", err)
		}
	}
	to, err := parseTimeouts(fc.Timeouts, fc.callFlags, fc.handlerFlags)
	if err != nil {
		return nil, err
	}
	plan := &daemonPlan{sock: sock, timeouts: to}
	if fc.OTLPEndpoint != "" {
		if plan.otlp, err = parseOTLPEndpoint(fc.OTLPEndpoint); err != nil {
			return nil, err
		}
	}
	if fc.AuditLog != "" {
		max := fc.AuditLogMaxBytes
		if max < 0 {
			return nil, fmt.Errorf("config: audit_log_max_bytes: %d is negative", max)
		}
		if max == 0 {
			max = defaultAuditLogMaxBytes
		}
		every, lines := fc.AuditCheckpointEvery, fc.AuditCheckpointLines
		if every < 0 || lines < 0 {
			return nil, fmt.Errorf("config: audit_checkpoint_every (%s) and audit_checkpoint_lines (%d) must not be negative", every, lines)
		}
		if every == 0 {
			every = defaultCheckpointEvery
		}
		if lines == 0 {
			lines = defaultCheckpointLines
		}
		opts := chainOptions{max: max, keep: auditLogKeep, id: id, every: every, lines: lines, logw: logw}
		if plan.audit, err = openAuditChain(inHome(home, fc.AuditLog), opts); err != nil {
			return nil, fmt.Errorf("config: audit_log: %v", err)
		}
		cfg.Audit = plan.audit
	}
	plan.node = cfg
	return plan, nil
}

// replaceFile atomically replaces path with data, mode 0600.
func replaceFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
