package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// twoDaemons makes a CA and two enrolled agents, alice (tokens for
// aScopes) and bob (bScopes), starts bob's daemon and then alice's,
// bootstrapping from bob. adjust, if not nil, edits each config first. It
// returns the CA directory, the homes and the IDs.
func twoDaemons(t *testing.T, aScopes, bScopes string, adjust func(name string, fc *fileConfig)) (ca, a, b, aID, bID string) {
	t.Helper()
	dir := t.TempDir()
	ca = filepath.Join(dir, "ca")
	anchor := mustOK(t, "ca", "init", "--dir", ca)
	a, b = filepath.Join(dir, "a"), filepath.Join(dir, "b")
	aID = mustOK(t, "init", "--home", a, "--name", "alice")
	bID = mustOK(t, "init", "--home", b, "--name", "bob")
	mustOK(t, "ca", "issue", "--dir", ca, "--agent", aID, "--name", "alice", "--out", filepath.Join(a, credentialFile))
	mustOK(t, "ca", "issue", "--dir", ca, "--agent", bID, "--name", "bob", "--out", filepath.Join(b, credentialFile))
	mustOK(t, "token", "issue", "--ca", ca, "--to", aID, "--scopes", aScopes, "--out", filepath.Join(a, "a.token"))
	mustOK(t, "token", "issue", "--ca", ca, "--to", bID, "--scopes", bScopes, "--out", filepath.Join(b, "b.token"))
	fb := writeConfig(t, b, "bob", anchor, "b.token")
	fa := writeConfig(t, a, "alice", anchor, "a.token")
	if adjust != nil {
		adjust("bob", fb)
		adjust("alice", fa)
	}
	bn := startDaemon(t, b, fb)
	fa.Bootstrap = []string{bn.Addrs()[0].String()}
	startDaemon(t, a, fa)
	return ca, a, b, aID, bID
}

// joinDaemon enrols one more agent with the CA at ca (tokens for scopes)
// and starts its daemon, bootstrapping from the daemon at peerHome. It
// returns the new home.
func joinDaemon(t *testing.T, ca, name, scopes, peerHome string) string {
	t.Helper()
	anchor, err := os.ReadFile(filepath.Join(ca, anchorIDFile))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := json.Unmarshal([]byte(mustOK(t, "status", "--home", peerHome)), &st); err != nil || len(st.ListenAddrs) == 0 {
		t.Fatalf("status of %s: %+v %v", peerHome, st, err)
	}
	home := filepath.Join(filepath.Dir(peerHome), name)
	id := mustOK(t, "init", "--home", home, "--name", name)
	mustOK(t, "ca", "issue", "--dir", ca, "--agent", id, "--name", name, "--out", filepath.Join(home, credentialFile))
	mustOK(t, "token", "issue", "--ca", ca, "--to", id, "--scopes", scopes, "--out", filepath.Join(home, "t.token"))
	fc := writeConfig(t, home, name, strings.TrimSpace(string(anchor)), "t.token")
	fc.Bootstrap = st.ListenAddrs[:1]
	startDaemon(t, home, fc)
	return home
}

// scrape returns home's /metrics page.
func scrape(t *testing.T, home string) string {
	t.Helper()
	var out strings.Builder
	resp, err := apiHTTP(t, home).Get("http://meshagent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(&out, resp.Body); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// metricSum adds the samples of metric name on page whose labels hold
// every one of labels (each `key="value"`).
func metricSum(page, name string, labels ...string) float64 {
	sum := 0.0
	for _, l := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || (rest == "" || (rest[0] != ' ' && rest[0] != '{')) {
			continue
		}
		all := true
		for _, want := range labels {
			all = all && strings.Contains(rest, want)
		}
		if !all {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// rawStream is a server-sent-event stream that the test reads only when
// it chooses to: until then the daemon's writes back up.
type rawStream struct {
	resp *http.Response
	br   *bufio.Reader
}

func openRawStream(t *testing.T, home, path string) *rawStream {
	t.Helper()
	resp, code, body := getStream(t, home, path)
	if resp == nil {
		t.Fatalf("%s: %d %s", path, code, body)
	}
	return &rawStream{resp: resp, br: bufio.NewReaderSize(resp.Body, 64<<10)}
}

// sseEvent is one server-sent event.
type sseEvent struct {
	name, data string
}

// read returns the next event, or an error when the stream ended.
func (s *rawStream) read() (sseEvent, error) {
	var ev sseEvent
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev, nil
			}
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
}

// readWithin is read in the background, failing the test after d.
func (s *rawStream) readWithin(t *testing.T, d time.Duration) (sseEvent, error) {
	t.Helper()
	type res struct {
		ev  sseEvent
		err error
	}
	c := make(chan res, 1)
	go func() { ev, err := s.read(); c <- res{ev, err} }()
	select {
	case r := <-c:
		return r.ev, r.err
	case <-time.After(d):
		s.resp.Body.Close()
		t.Fatalf("no event in %s", d)
	}
	return sseEvent{}, nil
}
