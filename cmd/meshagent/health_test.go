//go:build meshsim

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
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

// peerState is the state the daemon at home gives peer, or "" when it does
// not list it.
func peerState(t *testing.T, home, peer string) string {
	t.Helper()
	var ps []struct {
		PeerID string `json:"peer_id"`
		State  string `json:"state"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "peers", "--home", home)), &ps); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.PeerID == peer {
			return p.State
		}
	}
	return ""
}

// A rolling upgrade's step (docs/operations.md): a daemon stopped with
// SIGTERM leaves (its peer sees it dead at once and is no longer ready,
// being alone), and started again from the same home it is alive to its
// peer, which is ready again and can call it.
func TestRestartedDaemonRejoins(t *testing.T) {
	m := newTestMesh(t)
	a, _, fa := m.agent("alice", "ping:agent")
	b, bID, fb := m.agent("bob", "")
	na := m.start(a, fa)
	fb.Bootstrap = []string{na.Addrs()[0].String()}
	pa := apiHTTP(t, a)
	for round := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		logw := daemonLog(t, b)
		go func() { done <- serveDaemon(ctx, b, fb, nil, logw) }()
		if err := simulations.WaitFor(20*time.Second, func() error {
			if s := peerState(t, a, bID); s != "alive" {
				return fmt.Errorf("round %d: alice sees bob %q", round, s)
			}
			if code, body := probe(t, pa, "http://meshagent/readyz"); code != 200 {
				return fmt.Errorf("round %d: alice /readyz %d %s", round, code, body)
			}
			return apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": pingAction, "timeout": "5s"}, io.Discard)
		}); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel() // as SIGTERM does: bob leaves
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := simulations.WaitFor(5*time.Second, func() error {
			if s := peerState(t, a, bID); s == "alive" {
				return fmt.Errorf("alice still sees bob alive after his leave")
			}
			if code, body := probe(t, pa, "http://meshagent/readyz"); code != 503 {
				return fmt.Errorf("alice alone: /readyz %d %s", code, body)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// The split docs/operations.md recommends: a root anchor, offline, signs
// the tokens; an issuing anchor, online on an issuer daemon, signs the
// credentials and renews them. Both daemons list both anchors: a call
// with the root's token between agents enrolled by the issuing anchor is
// accepted, and the agent's credential is renewed by the issuer.
func TestRootAndIssuingAnchors(t *testing.T) {
	dir := t.TempDir()
	rootCA, issuingCA := filepath.Join(dir, "root"), filepath.Join(dir, "issuing")
	root := mustOK(t, "ca", "init", "--dir", rootCA)
	issuing := mustOK(t, "ca", "init", "--dir", issuingCA)
	enrol := func(name, ttl string) (home, id string) {
		home = filepath.Join(dir, name[:1])
		id = mustOK(t, "init", "--home", home, "--name", name)
		mustOK(t, "ca", "issue", "--dir", issuingCA, "--agent", id, "--name", name, "--ttl", ttl, "--out", filepath.Join(home, credentialFile))
		return home, id
	}
	a, aID := enrol("alice", "9s")
	b, bID := enrol("bob", "1h")
	mustOK(t, "token", "issue", "--ca", rootCA, "--to", aID, "--scopes", pingAction, "--out", filepath.Join(a, testTokenFile))
	fb := daemonConfig("bob", root)
	fb.Anchors = append(fb.Anchors, issuing)
	fb.IssuerKey = filepath.Join(issuingCA, anchorKeyFile)
	fb.Heartbeat, fb.DeadAfter = time.Second, 3*time.Second
	nb := startDaemon(t, b, fb)
	fa := daemonConfig("alice", root, testTokenFile)
	fa.Anchors = append(fa.Anchors, issuing)
	fa.Bootstrap = []string{nb.Addrs()[0].String()}
	fa.Heartbeat, fa.DeadAfter = time.Second, 3*time.Second
	na := startDaemon(t, a, fa)
	first := na.Credential().Expires
	admitted(t, a, bID, 20*time.Second)
	if err := apiCall(a, "POST", "/v1/send", map[string]any{"to": bID, "action": pingAction, "timeout": "5s"}, io.Discard); err != nil {
		t.Fatalf("a call with the root's token: %v", err)
	}
	if err := simulations.WaitFor(20*time.Second, func() error {
		if c := na.Credential(); !c.Expires.After(first) || !c.Issuer.Equal(nb.Credential().Issuer) {
			return fmt.Errorf("alice's credential not renewed by the issuing anchor: expires %s (was %s)", c.Expires, first)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
