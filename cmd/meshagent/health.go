package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/meshagent/meshagent/discovery"
	"github.com/meshagent/meshagent/node"
)

// Health endpoints, on the local API and on metrics_listen: plain status
// codes and a one-line text body, for probes (Kubernetes, Docker, systemd
// watchers, load balancers) that read no JSON.
//
//	GET /healthz  200 "ok": the daemon answers (live).
//	GET /readyz   200 "ready", or 503 "not ready: REASON": ready is
//	              admitted to at least one peer (another agent alive in the
//	              registry) and holding a credential valid now.
//
// They say nothing a peer could not learn from the mesh, and hold nothing
// per request; /readyz walks the registry once, as a /metrics scrape does.

// addHealthRoutes adds /healthz and /readyz for n to mux.
func addHealthRoutes(mux *http.ServeMux, n *node.Node) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reason := notReady(n, time.Now()); reason != "" {
			plain(w, http.StatusServiceUnavailable, "not ready: "+reason)
			return
		}
		plain(w, http.StatusOK, "ready")
	})
}

// notReady says why n is not ready at now, or "" when it is.
func notReady(n *node.Node, now time.Time) string {
	c := n.Credential()
	switch {
	case now.Before(c.NotBefore):
		return fmt.Sprintf("credential not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(c.Expires):
		return fmt.Sprintf("credential expired at %s", c.Expires.UTC().Format(time.RFC3339))
	}
	self := n.ID()
	for _, e := range n.Peers() {
		if e.PeerID != self && e.State == discovery.Alive {
			return ""
		}
	}
	return "admitted to no peer yet (no other agent alive in the registry)"
}

func plain(w http.ResponseWriter, status int, line string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, line)
}
