package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/trust"
)

// pingAction is served by every daemon itself; no local process can take
// it over.
const pingAction = "ping:agent"

// defaultCallTimeout is how long a call waits for its reply when the caller
// does not say: /v1/send without a timeout, and the --timeout default of
// 'meshagent send' and 'meshagent bench'.
const defaultCallTimeout = 10 * time.Second

// apiHeaderTimeout bounds the reading of a local API request's headers.
const apiHeaderTimeout = 5 * time.Second

// apiReadTimeout bounds the reading of one local API request, headers and
// body (at most 1 MiB, from a local process): a client that sends half a
// request is disconnected. net/http lifts the deadline once the body has
// been read to its end, so calls and streams that last longer are not cut
// (TestAPIReadTimeout checks both). A variable so that a test can shorten
// it.
var apiReadTimeout = 10 * time.Second

// apiServer serves a node's local API on its Unix socket: the routes in
// apiHandler (calls, status, revocations; the streams are in api.go) and
// /metrics.
type apiServer struct {
	sock string
	ln   *net.UnixListener
	srv  *http.Server
}

// newAPIServer binds the socket at sock (see listenAPI) for the local API of
// n, whose metrics are met. Nothing is served until serve.
func newAPIServer(sock string, n *node.Node, met *daemonMetrics, to timeouts) (*apiServer, error) {
	ln, err := listenAPI(sock)
	if err != nil {
		return nil, err
	}
	mux := apiHandler(n, met, to, pingAction)
	mux.Handle("GET /metrics", met.handler())
	addHealthRoutes(mux, n) // health.go
	return &apiServer{sock: sock, ln: ln, srv: newHTTPServer(mux)}, nil
}

// serve answers requests until ctx ends, then closes every connection and
// removes the socket.
func (s *apiServer) serve(ctx context.Context) error {
	defer os.Remove(s.sock)
	stop := context.AfterFunc(ctx, func() { s.srv.Close() })
	defer stop()
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveMetrics serves met's /metrics, and n's /healthz and /readyz, over
// TCP on addr (host:port) until ctx ends.
func serveMetrics(ctx context.Context, addr string, met *daemonMetrics, n *node.Node) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", met.handler())
	addHealthRoutes(mux, n)
	srv := newHTTPServer(mux)
	context.AfterFunc(ctx, func() { srv.Close() })
	go func() { _ = srv.Serve(ln) }()
	return nil
}

// newHTTPServer is an HTTP server of h with the local API's read timeouts.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: apiHeaderTimeout, ReadTimeout: apiReadTimeout}
}

// apiError is the JSON body of every error answer of the local API, and
// the data of a stream's last event when the daemon ends it.
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

// readJSON reads a request body of at most max bytes into v; it answers
// 400 and reports false when the body is too large or does not decode.
func readJSON(w http.ResponseWriter, r *http.Request, max int64, v any) bool {
	data, ok := readBody(w, r, max)
	if !ok {
		return false
	}
	if err := json.Unmarshal(data, v); err != nil {
		writeJSON(w, 400, apiError{Error: "bad JSON: " + err.Error()})
		return false
	}
	return true
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
// to are the daemon's per-action timeouts.
func apiHandler(n *node.Node, met *daemonMetrics, to timeouts, builtin ...string) *http.ServeMux {
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
	mux.HandleFunc("GET /v1/actions", serveActions(n))
	mux.HandleFunc("POST /v1/send", sendHandler(n, to, met.tracer)) // longcalls.go
	mux.HandleFunc("POST /v1/delegate", delegateHandler(n))         // longcalls.go
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
	addStreamingRoutes(mux, n, met, to, builtin)
	return mux
}

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
	ln.SetUnlinkOnClose(false) // it will not be at bound; apiServer.serve removes sock
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
