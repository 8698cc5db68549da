package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
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

func newRunCmd() *cobra.Command {
	var home, credential, issuerKey string
	var listen, bootstrap, anchors, tokens []string
	var heartbeat, deadAfter time.Duration
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
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDaemon(ctx, home, fc, nil)
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
	required(cmd, "home")
	return cmd
}

// runDaemon builds the node from the config, checking every field before
// anything starts, serves the local API, and runs until ctx ends. ready, if
// not nil, is called once the API socket is listening.
func runDaemon(ctx context.Context, home string, fc *fileConfig, ready func(*node.Node)) error {
	id, err := trust.LoadIdentity(filepath.Join(home, identityFile))
	if err != nil {
		return err
	}
	cfg := node.DefaultConfig()
	cfg.Identity = id
	if len(fc.Listen) > 0 {
		cfg.ListenAddrs = fc.Listen
	}
	if len(fc.Anchors) == 0 {
		return fmt.Errorf("config: anchors: at least one trusted anchor ID is required")
	}
	for _, a := range fc.Anchors {
		k, err := trust.ParsePublicKey(a)
		if err != nil {
			return fmt.Errorf("config: anchors: %v", err)
		}
		cfg.Policy.Anchors = append(cfg.Policy.Anchors, k)
	}
	cb, err := readPEMFile(inHome(home, fc.Credential), trust.PEMCredential, trust.MaxCredentialSize)
	if err != nil {
		return fmt.Errorf("config: credential: %v", err)
	}
	if cfg.Credential, err = trust.ParseCredential(cb); err != nil {
		return fmt.Errorf("config: credential: %v", err)
	}
	for _, tf := range fc.Tokens {
		t, err := loadToken(inHome(home, tf))
		if err != nil {
			return fmt.Errorf("config: tokens: %v", err)
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
		return fmt.Errorf("config: dead_after (%s) must be longer than heartbeat (%s)", cfg.DeadAfter, cfg.HeartbeatInterval)
	}
	for _, a := range fc.Allowlist {
		k, err := trust.ParsePublicKey(a)
		if err != nil {
			return fmt.Errorf("config: allowlist: %v", err)
		}
		cfg.Allowlist = append(cfg.Allowlist, k)
	}
	for _, b := range fc.Bootstrap {
		if _, err := peer.AddrInfoFromString(b); err != nil {
			return fmt.Errorf("config: bootstrap: %q: %v", b, err)
		}
	}
	cfg.Bootstrap = fc.Bootstrap
	cfg.MDNS = fc.MDNS
	if fc.IssuerKey != "" {
		if cfg.Issuer, err = trust.LoadAnchorKey(inHome(home, fc.IssuerKey)); err != nil {
			return fmt.Errorf("config: issuer_key: %v", err)
		}
	}
	credPath := inHome(home, fc.Credential)
	cfg.OnCredential = func(c *trust.Credential) {
		if err := replaceFile(credPath, trust.EncodePEM(c.Bytes(), trust.PEMCredential)); err != nil {
			fmt.Fprintf(os.Stderr, "meshagent: saving renewed credential: %v\n", err)
		}
	}
	revDir := filepath.Join(home, "revocations")
	if cfg.Revocations, err = loadRevocations(revDir); err != nil {
		return fmt.Errorf("revocations: %v", err)
	}
	cfg.OnRevocation = func(raw []byte) {
		if err := saveRevocation(revDir, raw); err != nil {
			fmt.Fprintf(os.Stderr, "meshagent: saving revocation: %v\n", err)
		}
	}
	if fc.AuditLog != "" {
		af, err := os.OpenFile(inHome(home, fc.AuditLog), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("config: audit_log: %v", err)
		}
		defer af.Close()
		cfg.Audit = af
	}
	metrics := newDaemonMetrics()
	cfg.Prometheus = metrics.reg
	n, err := node.New(cfg)
	if err != nil {
		return err
	}
	metrics.watch(n)
	if fc.MetricsListen != "" {
		ml, err := net.Listen("tcp", fc.MetricsListen)
		if err != nil {
			return fmt.Errorf("config: metrics_listen: %v", err)
		}
		msrv := &http.Server{Handler: metrics.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { <-ctx.Done(); msrv.Close() }()
		go func() { _ = msrv.Serve(ml) }()
	}
	_ = n.Handle("ping:agent", func(context.Context, *node.Request) ([]byte, error) {
		return json.Marshal(map[string]string{"pong": n.Name()})
	})
	if err := n.Start(ctx); err != nil {
		return err
	}
	defer n.Close()
	sock := inHome(home, fc.APISocket)
	if sock == "" {
		sock = filepath.Join(home, "api.sock")
	}
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return err
	}
	api := apiHandler(n)
	api.Handle("GET /metrics", metrics.handler())
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	if ready != nil {
		ready(n)
	}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	_ = os.Remove(sock)
	return nil
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// apiHandler serves the local API. See docs/local-api.md.
func apiHandler(n *node.Node) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		var addrs []string
		for _, a := range n.Addrs() {
			addrs = append(addrs, a.String())
		}
		writeJSON(w, 200, map[string]any{"peer_id": n.ID().String(), "name": n.Name(), "listen_addrs": addrs,
			"credential": n.CredentialStatus(), "registry_size": n.Registry().Len()})
	})
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, n.Peers())
	})
	mux.HandleFunc("POST /v1/send", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			To      string          `json:"to"`
			Action  string          `json:"action"`
			Body    json.RawMessage `json:"body"`
			Timeout string          `json:"timeout"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			writeJSON(w, 400, apiError{Error: "bad JSON: " + err.Error()})
			return
		}
		to, err := trust.ParsePublicKey(req.To)
		if err != nil {
			writeJSON(w, 400, apiError{Error: "to: " + err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		timeout := 10 * time.Second
		if req.Timeout != "" {
			if timeout, err = time.ParseDuration(req.Timeout); err != nil {
				writeJSON(w, 400, apiError{Error: "timeout: " + err.Error()})
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		rep, err := n.Call(ctx, to.PeerID(), req.Action, req.Body, nil)
		if err != nil {
			writeJSON(w, 403, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		var body any = string(rep.Body)
		if json.Valid(rep.Body) {
			body = json.RawMessage(rep.Body)
		}
		writeJSON(w, 200, map[string]any{"from": rep.From.String(), "correlation_id": rep.CorrelationID.String(), "body": body})
	})
	mux.HandleFunc("POST /v1/revoke", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			writeJSON(w, 400, apiError{Error: err.Error()})
			return
		}
		raw, err := trust.DecodePEM(data, trust.PEMRevocation)
		if err == nil {
			err = n.Revoke(r.Context(), raw)
		}
		if err != nil {
			writeJSON(w, 400, apiError{Error: err.Error(), Code: string(trust.CodeOf(err))})
			return
		}
		writeJSON(w, 200, map[string]string{"status": "applied and published"})
	})
	addStreamingRoutes(mux, n)
	return mux
}

// apiClient talks to a daemon's local API.
func apiClient(home string) (*http.Client, error) {
	fc, err := loadFileConfig(home)
	if err != nil {
		return nil, err
	}
	sock := inHome(home, fc.APISocket)
	if sock == "" {
		sock = filepath.Join(home, "api.sock")
	}
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}, nil
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

// loadRevocations reads every persisted revocation in dir.
func loadRevocations(dir string) ([][]byte, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".pem" {
			continue
		}
		raw, err := readPEMFile(filepath.Join(dir, e.Name()), trust.PEMRevocation, trust.MaxRevocationSize)
		if err != nil {
			return nil, err
		}
		out = append(out, raw)
	}
	return out, nil
}

// saveRevocation persists one revocation, named by its hash.
func saveRevocation(dir string, raw []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	sum := sha256.Sum256(raw)
	path := filepath.Join(dir, hex.EncodeToString(sum[:8])+".pem")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return trust.WriteFileExclusive(path, trust.EncodePEM(raw, trust.PEMRevocation), 0o600)
}
