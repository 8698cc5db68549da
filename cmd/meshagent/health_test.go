//go:build meshsim

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshagent/meshagent/simulations"
)

// freeTCPAddr is a loopback address with a port free a moment ago.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// probe GETs path with c and returns the status and the body's one line.
func probe(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("%s: Content-Type %q", url, ct)
	}
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// healthProbes are the two ways to reach a daemon's health endpoints: its
// local API socket and its metrics listener.
type healthProbes struct {
	api     *http.Client
	metrics string // http://host:port
}

func (h healthProbes) check(t *testing.T, path string) (api, tcp string) {
	t.Helper()
	c1, b1 := probe(t, h.api, "http://meshagent"+path)
	c2, b2 := probe(t, http.DefaultClient, h.metrics+path)
	return fmt.Sprintf("%d %s", c1, b1), fmt.Sprintf("%d %s", c2, b2)
}

// A daemon alone is live but not ready (503, with the reason), on its
// local API and on metrics_listen alike; it is ready once a second daemon
// joined it, and not ready again once its credential expired.
func TestHealthAndReadiness(t *testing.T) {
	m := newTestMesh(t)
	a, _, fa := m.agent("alice", "")
	b, _, fb := m.agent("bob", "", "--ttl", "6s")
	fa.MetricsListen, fb.MetricsListen = freeTCPAddr(t), freeTCPAddr(t)
	na := m.start(a, fa)
	pa := healthProbes{apiHTTP(t, a), "http://" + fa.MetricsListen}

	for _, path := range []string{"/healthz"} {
		api, tcp := pa.check(t, path)
		if api != "200 ok" || tcp != "200 ok" {
			t.Fatalf("%s: api %q, metrics_listen %q", path, api, tcp)
		}
	}
	api, tcp := pa.check(t, "/readyz")
	const alone = "503 not ready: admitted to no peer yet"
	if !strings.HasPrefix(api, alone) || !strings.HasPrefix(tcp, alone) {
		t.Fatalf("alice alone: /readyz api %q, metrics_listen %q", api, tcp)
	}
	if v := metricSum(scrape(t, a), "meshagent_ready"); v != 0 {
		t.Fatalf("alice alone: meshagent_ready %v", v)
	}
	// Only GET: a probe changes nothing.
	if resp, err := pa.api.Post("http://meshagent/readyz", "text/plain", nil); err != nil || resp.StatusCode != 405 {
		t.Fatalf("POST /readyz: %v %v", resp, err)
	}

	m.start(b, fb, na)
	pb := healthProbes{apiHTTP(t, b), "http://" + fb.MetricsListen}
	for _, p := range []healthProbes{pa, pb} {
		if err := simulations.WaitFor(20*time.Second, func() error {
			if api, tcp := p.check(t, "/readyz"); api != "200 ready" || tcp != "200 ready" {
				return fmt.Errorf("/readyz: api %q, metrics_listen %q", api, tcp)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if v := metricSum(scrape(t, a), "meshagent_ready"); v != 1 {
		t.Fatalf("alice joined: meshagent_ready %v", v)
	}

	// bob's credential (6 s, no issuer to renew it) runs out.
	if err := simulations.WaitFor(20*time.Second, func() error {
		api, tcp := pb.check(t, "/readyz")
		const expired = "503 not ready: credential expired at "
		if !strings.HasPrefix(api, expired) || !strings.HasPrefix(tcp, expired) {
			return fmt.Errorf("/readyz: api %q, metrics_listen %q", api, tcp)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if api, tcp := pb.check(t, "/healthz"); api != "200 ok" || tcp != "200 ok" {
		t.Fatalf("/healthz with an expired credential: %q %q", api, tcp)
	}
}
