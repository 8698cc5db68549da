package main

// The console: a read-only web page the daemon serves on a loopback
// address (--console 127.0.0.1:PORT), guarded by an access token it prints
// at start. It shows the agents and their liveness, the actions each
// advertises, a live tail of the audit records, a token inspector and the
// revocations. docs/console.md says how to use it; the tail is in
// console_tail.go, the page's data in console_page.go.

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/trust"
)

// The console's bounds.
const (
	consoleMaxConns    = 32               // TCP connections at once; more wait in the kernel's backlog
	consoleMaxForm     = 64 << 10         // bytes of an inspector form (a token is at most 4 KiB)
	consoleMaxHeader   = 16 << 10         // bytes of request headers
	consoleWriteWithin = 30 * time.Second // to write a page
)

// consoleSecurityHeaders go on every answer of the console, refusals
// included: no script, style or connection but the console's own; no
// framing (clickjacking); no referrer to other sites; no caching of what
// a page showed. (Referrer-Policy no-referrer would make browsers send
// "Origin: null" on the console's own form.)
var consoleSecurityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	"X-Frame-Options":              "DENY",
	"X-Content-Type-Options":       "nosniff",
	"Referrer-Policy":              "same-origin",
	"Cache-Control":                "no-store",
	"Cross-Origin-Opener-Policy":   "same-origin",
	"Cross-Origin-Resource-Policy": "same-origin",
}

//go:embed console
var consoleAssets embed.FS

// consoleTemplate is the page; html/template escapes every value put in
// it for where it goes (text, attribute, URL).
var consoleTemplate = template.Must(template.ParseFS(consoleAssets, "console/page.html"))

// consoleServer serves the console of one node.
type consoleServer struct {
	token  string          // the access token, hex
	cookie string          // the cookie that carries it, named by port
	hosts  map[string]bool // Host headers that name this server
	ln     net.Listener
	srv    *http.Server
	done   chan struct{} // closed when srv.Serve returned
	served bool          // start was called

	tail *auditTail
	revs *consoleRevocations
	n    *node.Node // set by attach, before start
}

// loopbackAddr checks that addr (host:port) is a loopback address and
// returns it with localhost as 127.0.0.1: the console serves this host
// only.
func loopbackAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || (p == 0 && port != "0") {
		return "", fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%s is not a loopback address: the console listens on 127.0.0.1, ::1 or localhost only", addr)
	}
	return net.JoinHostPort(host, port), nil
}

// newConsole binds the console at addr, which must be a loopback address,
// with a fresh access token. Its token inspector verifies under policy.
// Nothing is served until start.
func newConsole(addr string, policy trust.Policy) (*consoleServer, error) {
	addr, err := loopbackAddr(addr)
	if err != nil {
		return nil, err
	}
	revs, err := newConsoleRevocations(policy)
	if err != nil {
		return nil, err
	}
	var tok [32]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	tcp := ln.Addr().(*net.TCPAddr)
	port := strconv.Itoa(tcp.Port)
	c := &consoleServer{
		token:  hex.EncodeToString(tok[:]),
		cookie: "meshagent_console_" + port,
		hosts:  map[string]bool{net.JoinHostPort(tcp.IP.String(), port): true},
		ln:     netutil.LimitListener(ln, consoleMaxConns),
		done:   make(chan struct{}),
		tail:   newAuditTail(),
		revs:   revs,
	}
	if tcp.IP.Equal(net.IPv4(127, 0, 0, 1)) || tcp.IP.Equal(net.IPv6loopback) {
		c.hosts["localhost:"+port] = true
	}
	c.srv = &http.Server{Handler: c.handler(), ReadHeaderTimeout: apiHeaderTimeout, ReadTimeout: apiReadTimeout,
		IdleTimeout: time.Minute, MaxHeaderBytes: consoleMaxHeader}
	return c, nil
}

// attach makes the console show n. Call it before start.
func (c *consoleServer) attach(n *node.Node) { c.n = n }

// audited hands r to the live tails; nil-safe, so that the daemon's audit
// hook can call it with no console. It never blocks.
func (c *consoleServer) audited(r node.AuditRecord) {
	if c != nil {
		c.tail.add(r)
	}
}

// url is the console's address with its access token: what to open.
func (c *consoleServer) url() string {
	return "http://" + c.ln.Addr().String() + "/?token=" + c.token
}

// upLine is the line the daemon says once the console serves.
func (c *consoleServer) upLine() string {
	return "meshagent: console (read-only; the token in this URL is its password): " + c.url()
}

// start serves the console until ctx ends or close.
func (c *consoleServer) start(ctx context.Context) {
	context.AfterFunc(ctx, func() { c.srv.Close() })
	c.served = true
	go func() {
		defer close(c.done)
		_ = c.srv.Serve(c.ln)
	}()
}

// close stops the console (and closes its listener if it never served)
// and waits for its server to return.
func (c *consoleServer) close() {
	c.srv.Close()
	c.ln.Close()
	if c.served {
		<-c.done
	}
}

// handler is the console's front: security headers, then the Host check
// (against DNS rebinding), then the access token, then the routes.
func (c *consoleServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.servePage)
	mux.HandleFunc("POST /inspect", c.serveInspect)
	mux.HandleFunc("GET /events", c.serveEvents)
	static, _ := fs.Sub(consoleAssets, "console/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range consoleSecurityHeaders {
			w.Header().Set(k, v)
		}
		if !c.hosts[r.Host] {
			// A page of another site whose name now resolves to
			// 127.0.0.1 sends its own name.
			http.Error(w, "meshagent console: this server does not answer for host "+strconv.Quote(r.Host), http.StatusMisdirectedRequest)
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !c.hosts[trimScheme(o)] {
			http.Error(w, "meshagent console: cross-origin request refused", http.StatusForbidden)
			return
		}
		if q := r.URL.Query(); q.Has("token") && r.Method == http.MethodGet && r.URL.Path == "/" {
			if !c.tokenOK(q.Get("token")) {
				http.Error(w, "meshagent console: wrong access token", http.StatusForbidden)
				return
			}
			// The token moves to a cookie that scripts cannot read and
			// other sites' requests do not carry; the URL loses it.
			http.SetCookie(w, &http.Cookie{Name: c.cookie, Value: c.token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		ck, err := r.Cookie(c.cookie)
		if err != nil {
			http.Error(w, "meshagent console: open the URL with the access token that the daemon printed when it started", http.StatusUnauthorized)
			return
		}
		if !c.tokenOK(ck.Value) {
			http.Error(w, "meshagent console: wrong access token (the daemon prints a new one each start)", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// trimScheme returns the host:port of an http origin, "" for another
// scheme.
func trimScheme(origin string) string {
	const p = "http://"
	if len(origin) > len(p) && origin[:len(p)] == p {
		return origin[len(p):]
	}
	return ""
}

func (c *consoleServer) tokenOK(s string) bool {
	return subtle.ConstantTimeCompare([]byte(s), []byte(c.token)) == 1
}

func (c *consoleServer) servePage(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, nil)
}

// serveInspect answers the token inspector's form: the page, with the
// decoded token and its verdict.
func (c *consoleServer) serveInspect(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, consoleMaxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "meshagent console: the form is over 64 KiB or does not parse", http.StatusRequestEntityTooLarge)
		return
	}
	in := inspectForm{Token: r.PostForm.Get("token"), Holder: r.PostForm.Get("holder"), Action: r.PostForm.Get("action")}
	c.render(w, r, &in)
}

func (c *consoleServer) render(w http.ResponseWriter, r *http.Request, in *inspectForm) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(consoleWriteWithin))
	p := c.page(r.Context(), in)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = consoleTemplate.Execute(w, p) // fails only when the client went away or the deadline passed
}

// consoleRevocations are the revocations the node applied, as the console
// shows them, and a verifier that holds them for the token inspector. The
// node tells of each one it applies (Config.OnRevocation), the persisted
// ones at start included; what it revokes expires on the node's schedule
// (trust.Verifier.KeepUntil), the same here.
type consoleRevocations struct {
	v *trust.Verifier

	mu    sync.Mutex
	shown []revocationView // the latest consoleMaxRevocationsShown
}

// consoleMaxRevocationsShown bounds the revocations listed; the verifier
// holds them all (trust.Policy.MaxRevocations, as the node's).
const consoleMaxRevocationsShown = 500

// revocationView is one revocation as the page lists it.
type revocationView struct {
	What, ID, Issuer, Issued string
	keep                     time.Time
	Keep                     string
}

func newConsoleRevocations(p trust.Policy) (*consoleRevocations, error) {
	v, err := trust.NewVerifier(p)
	if err != nil {
		return nil, err
	}
	return &consoleRevocations{v: v}, nil
}

// watch returns an OnRevocation for the node that calls next (when not
// nil) and records the revocation here.
func (s *consoleRevocations) watch(next func([]byte)) func([]byte) {
	return func(raw []byte) {
		if next != nil {
			next(raw)
		}
		s.add(raw, time.Now())
	}
}

func (s *consoleRevocations) add(raw []byte, now time.Time) {
	r, err := trust.ParseRevocation(raw)
	if err != nil {
		return // the node applied it: it parses
	}
	if s.v.AddRevocation(r, now) != nil {
		return // the node's verifier, of the same policy, took it: this one does too
	}
	rv := revocationView{Issuer: r.Issuer.String(), Issued: r.IssuedAt.UTC().Format(time.RFC3339), keep: s.v.KeepUntil(r)}
	rv.Keep = rv.keep.UTC().Format(time.RFC3339)
	switch {
	case r.LinkID != (trust.LinkID{}):
		rv.What, rv.ID = "token link", r.LinkID.String()
	case r.Serial != ([16]byte{}):
		rv.What, rv.ID = "credential", hex.EncodeToString(r.Serial[:])
	default:
		rv.What, rv.ID = "agent (all its credentials and links before "+r.Before.UTC().Format(time.RFC3339)+")", r.Agent.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.shown) == consoleMaxRevocationsShown {
		s.shown = append(s.shown[:0], s.shown[1:]...)
	}
	s.shown = append(s.shown, rv)
}

// list returns the revocations kept at now, the latest first, and drops
// the others (from the verifier too).
func (s *consoleRevocations) list(now time.Time) []revocationView {
	s.v.PruneRevocations(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.shown[:0]
	for _, rv := range s.shown {
		if now.Before(rv.keep) {
			kept = append(kept, rv)
		}
	}
	clear(s.shown[len(kept):])
	s.shown = kept
	out := make([]revocationView, len(kept))
	for i, rv := range kept {
		out[len(kept)-1-i] = rv
	}
	return out
}
