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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
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
	required(cmd, "home")
	return cmd
}

// runDaemon is serveDaemon logging to stderr.
func runDaemon(ctx context.Context, home string, fc *fileConfig, ready func(*node.Node)) error {
	return serveDaemon(ctx, home, fc, ready, os.Stderr)
}

// testHookNodeConfig, when set by a test, adjusts the node's config (its
// handler timeout, say) before the node is built.
var testHookNodeConfig func(*node.Config)

// apiReadTimeout bounds the reading of one local API request, headers and
// body (at most 1 MiB, from a local process): a client that sends half a
// request is disconnected. net/http lifts the deadline once the body has
// been read to its end, so calls and streams that last longer are not cut
// (TestAPIReadTimeout checks both).
var apiReadTimeout = 10 * time.Second

// serveDaemon builds the node from the config, checking every field before
// anything starts, serves the local API, and runs until ctx ends. ready, if
// not nil, is called once the API socket is listening. What the daemon does
// not stop for (a persisted revocation it drops, a renewed credential it
// could not save) is said on logw, one line each.
func serveDaemon(ctx context.Context, home string, fc *fileConfig, ready func(*node.Node), logw io.Writer) error {
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
	sock := inHome(home, fc.APISocket)
	if sock == "" {
		sock = filepath.Join(home, "api.sock")
	}
	if err := checkSocketDir(filepath.Dir(sock)); err != nil {
		return fmt.Errorf("api socket: %v", err)
	}
	credPath := inHome(home, fc.Credential)
	cfg.OnCredential = func(c *trust.Credential) {
		if err := replaceFile(credPath, trust.EncodePEM(c.Bytes(), trust.PEMCredential)); err != nil {
			fmt.Fprintf(logw, "meshagent: saving renewed credential: %v\n", err)
		}
	}
	revDir := filepath.Join(home, "revocations")
	if cfg.Revocations, err = loadRevocations(revDir, cfg.Policy, time.Now(), logw); err != nil {
		return fmt.Errorf("revocations: %v", err)
	}
	cfg.OnRevocation = func(raw []byte) {
		if err := saveRevocation(revDir, raw); err != nil {
			fmt.Fprintf(logw, "meshagent: saving revocation: %v\n", err)
		}
	}
	if fc.AuditLog != "" {
		max := fc.AuditLogMaxBytes
		if max < 0 {
			return fmt.Errorf("config: audit_log_max_bytes: %d is negative", max)
		}
		if max == 0 {
			max = defaultAuditLogMaxBytes
		}
		af, err := openRotating(inHome(home, fc.AuditLog), max, auditLogKeep, logw)
		if err != nil {
			return fmt.Errorf("config: audit_log: %v", err)
		}
		defer af.Close()
		cfg.Audit = af
	}
	if testHookNodeConfig != nil {
		testHookNodeConfig(&cfg)
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
		msrv := &http.Server{Handler: metrics.handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: apiReadTimeout}
		go func() { <-ctx.Done(); msrv.Close() }()
		go func() { _ = msrv.Serve(ml) }()
	}
	_ = n.Handle(pingAction, func(context.Context, *node.Request) ([]byte, error) {
		return json.Marshal(map[string]string{"pong": n.Credential().Name})
	})
	if err := n.Start(ctx); err != nil {
		return err
	}
	defer n.Close()
	ln, err := listenAPI(sock)
	if err != nil {
		return fmt.Errorf("api socket: %v", err)
	}
	api := apiHandler(n, metrics, pingAction)
	api.Handle("GET /metrics", metrics.handler())
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: apiReadTimeout}
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
	// RetryAfterMS is when to try again, for code busy (503).
	RetryAfterMS int64 `json:"retry_after_ms,omitempty"`
}

// writeBusy answers a busy refusal, whose retry-after is d: 503, a
// Retry-After header in whole seconds (rounded up, at least 1) and the
// JSON code busy with retry_after_ms.
func writeBusy(w http.ResponseWriter, err error, d time.Duration) {
	w.Header().Set("Retry-After", strconv.FormatInt(max(int64((d+time.Second-1)/time.Second), 1), 10))
	writeJSON(w, 503, apiError{Error: err.Error(), Code: string(protocol.CodeBusy), RetryAfterMS: max(d.Milliseconds(), 1)})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// readBody reads the whole request body, at most max bytes, within the
// server's read timeout. Reading it to its end is what lets the server lift
// the read deadline and watch for the client going away (which cancels the
// request's context) while the handler works. On failure it answers the
// request and returns false.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, bool) {
	data, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		writeJSON(w, 400, apiError{Error: "reading the request: " + err.Error()})
		return nil, false
	}
	if int64(len(data)) > max {
		writeJSON(w, 413, apiError{Error: fmt.Sprintf("request body over %d bytes", max)})
		return nil, false
	}
	return data, true
}

// apiHandler serves the local API. See docs/local-api.md. builtin are the
// actions the daemon serves itself: no local process may handle them. The
// gauges of what its streams hold are registered with met.
func apiHandler(n *node.Node, met *daemonMetrics, builtin ...string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := n.Stats()
		var addrs []string
		for _, a := range n.Addrs() {
			addrs = append(addrs, a.String())
		}
		writeJSON(w, 200, map[string]any{"peer_id": n.ID().String(), "name": n.Credential().Name, "listen_addrs": addrs,
			"credential": st.Credential, "registry_size": st.Agents})
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
		data, ok := readBody(w, r, 1<<20)
		if !ok {
			return
		}
		if err := json.Unmarshal(data, &req); err != nil {
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
		if d, busy := protocol.RetryAfter(err); busy {
			writeBusy(w, err, d) // shed load, not a refusal: try again then
			return
		}
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
		data, ok := readBody(w, r, 64<<10)
		if !ok {
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
	addStreamingRoutes(mux, n, met, builtin)
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

// pingAction is served by every daemon itself; no local process can take
// it over.
const pingAction = "ping:agent"

// checkSocketDir refuses a directory for the API socket that another user
// could write to (and so replace the socket under its clients) or that
// another user owns.
func checkSocketDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("directory %s is owned by uid %d, not by this user (uid %d)", dir, sys.Uid, os.Geteuid())
	}
	if m := st.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("directory %s is writable by group or others (mode %04o): make it 0700 or 0755", dir, m)
	}
	return nil
}

// testHookSocketBound, when set by a test, is called with the path the API
// socket was bound at, before anything else is done with it.
var testHookSocketBound func(path string)

// listenAPI listens on the Unix socket sock so that no other user can ever
// connect to it, whatever the umask: the socket is bound inside a fresh
// directory of mode 0700 next to sock, made 0600 there, and only then
// renamed to sock. sock's directory must pass checkSocketDir. An existing
// sock is replaced only if it is a socket that no daemon serves.
func listenAPI(sock string) (*net.UnixListener, error) {
	dir := filepath.Dir(sock)
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if st, err := os.Lstat(sock); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", sock)
		}
		if c, err := net.DialTimeout("unix", sock, 2*time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is serving it", sock)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".api")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp made it 0700 (less if the umask says so); make sure.
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, err
	}
	bound := filepath.Join(tmp, "s")
	if len(bound) >= 104 { // sun_path: 108 bytes on Linux, 104 on BSDs
		return nil, fmt.Errorf("%s: path too long for a Unix socket (its directory's name is %d bytes)", sock, len(dir))
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // it will not be at bound; serveDaemon removes sock
	if testHookSocketBound != nil {
		testHookSocketBound(bound)
	}
	if err := os.Chmod(bound, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(bound, sock); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
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

// loadRevocations reads the revocations persisted in dir and returns those
// that apply under policy (its anchors) at now, so that the node is only
// ever given revocations it accepts. A file it leaves out (not a revocation,
// a format this version no longer reads, an issuer that is no longer a
// trusted anchor, a bad signature, expired) is named on logw with the
// reason, one line each, and left on disk: the operator decides. An error
// reading the directory or a file stops the daemon: a revocation it could
// not read may be one that applies.
func loadRevocations(dir string, policy trust.Policy, now time.Time, logw io.Writer) ([][]byte, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// A scratch verifier with the configured anchors checks each one as
	// the node will, without touching the node.
	scratch, err := trust.NewVerifier(policy)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".pem" {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !e.Type().IsRegular() {
			fmt.Fprintf(logw, "meshagent: dropped revocation %s: not a regular file\n", path)
			continue
		}
		const max = 2*trust.MaxRevocationSize + 1024 // base64 and PEM lines
		data, err := readLimited(path, max)
		if err != nil {
			return nil, err
		}
		why := ""
		var raw []byte
		var r *trust.Revocation
		if len(data) > max {
			err = fmt.Errorf("over %d bytes", max)
		} else if raw, err = trust.DecodePEM(data, trust.PEMRevocation); err == nil {
			r, err = trust.ParseRevocation(raw)
		}
		switch {
		case err != nil:
			why = fmt.Sprintf("it no longer parses (%v)", err)
		case !scratch.IsAnchor(r.Issuer):
			why = fmt.Sprintf("issuer %s is no longer a trusted anchor", r.Issuer)
		case !now.Before(scratch.KeepUntil(r)):
			// AddRevocation would accept it and keep nothing.
			if err := scratch.AddRevocation(r, now); err != nil {
				why = fmt.Sprintf("it does not verify (%v)", err)
			} else {
				why = fmt.Sprintf("it expired at %s (what it revoked has expired too)", scratch.KeepUntil(r).UTC().Format(time.RFC3339))
			}
		default:
			if err := scratch.AddRevocation(r, now); err != nil {
				if trust.CodeOf(err) == trust.CodeFull {
					return nil, fmt.Errorf("%s: %v", path, err)
				}
				why = fmt.Sprintf("it does not verify (%v)", err)
			}
		}
		if why != "" {
			fmt.Fprintf(logw, "meshagent: dropped revocation %s: %s\n", path, why)
			continue
		}
		out = append(out, raw)
	}
	return out, nil
}

// readLimited reads at most max+1 bytes of path.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
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

// The audit log is rotated by size: past max bytes it is renamed PATH.1
// (PATH.1 to PATH.2, and so on; the oldest of auditLogKeep is dropped) and
// a new PATH is opened. So the log takes at most (auditLogKeep+1) × max
// bytes on disk, plus one line per file.
const (
	defaultAuditLogMaxBytes = 64 << 20
	auditLogKeep            = 3
)

// rotatingFile is an append-only file rotated by size. Each Write is one
// audit line: a line is never split across two files.
type rotatingFile struct {
	mu   sync.Mutex
	path string
	max  int64
	keep int
	f    *os.File
	size int64
	logw io.Writer // rotation failures, one line each
}

func openRotating(path string, max int64, keep int, logw io.Writer) (*rotatingFile, error) {
	r := &rotatingFile{path: path, max: max, keep: keep, logw: logw}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

func (r *rotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.size > 0 && r.size+int64(len(p)) > r.max {
		if err := r.rotate(); err != nil {
			fmt.Fprintf(r.logw, "meshagent: rotating the audit log: %v\n", err)
			if r.f == nil {
				return 0, err
			}
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

// rotate shifts PATH.i to PATH.i+1, PATH to PATH.1, and opens a new PATH.
// If a rename fails, it goes on writing to the file it has.
func (r *rotatingFile) rotate() error {
	for i := r.keep - 1; i >= 1; i-- {
		from := fmt.Sprintf("%s.%d", r.path, i)
		if err := os.Rename(from, fmt.Sprintf("%s.%d", r.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return err
	}
	old := r.f
	r.f = nil
	err := r.open()
	if err != nil {
		r.f = old // renamed, but still written: nothing is lost
		return err
	}
	old.Close()
	return nil
}

func (r *rotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
