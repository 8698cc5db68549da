//go:build meshsim

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshagent/meshagent/node"
)

// The local API round trip (issue 15), beside the call it makes:
//
//	go test -tags meshsim -run '^$' -bench 'LocalAPIPing' -benchtime 2000x ./cmd/meshagent/

// pingPair starts bob's daemon and alice's (a token for ping:agent),
// bootstrapping from bob, waits until alice admitted bob, and returns
// alice's node and home and bob's peer ID.
func pingPair(b *testing.B) (an *node.Node, a string, bID peer.ID) {
	m := newTestMesh(b)
	a, _, fa := m.agent("alice", "ping:agent")
	bh, bs, fb := m.agent("bob", "")
	an = m.start(a, fa, m.start(bh, fb))
	admitted(b, a, bs, 15*time.Second)
	id, err := peer.Decode(bs)
	if err != nil {
		b.Fatal(err)
	}
	return an, a, id
}

// apiPinger returns a function that POSTs /v1/send of ping:agent to to on
// the daemon at home, with one keep-alive HTTP client on its Unix socket,
// as an agent's SDK would.
func apiPinger(b *testing.B, home string, to peer.ID) func() {
	sock := filepath.Join(home, "api.sock")
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	body, _ := json.Marshal(map[string]string{"to": to.String(), "action": pingAction})
	return func() {
		req, _ := http.NewRequest("POST", "http://meshagent/v1/send", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("/v1/send: %s", resp.Status)
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func p50p99(d []time.Duration) (float64, float64) {
	slices.Sort(d)
	return float64(d[len(d)/2].Nanoseconds()) / 1000, float64(d[min(len(d)*99/100, len(d)-1)].Nanoseconds()) / 1000
}

// BenchmarkLocalAPIPing: b.N calls of ping:agent from alice's daemon to
// bob's over loopback TCP, each way: through alice's local API (a Go
// keep-alive client on her Unix socket) and by her node's Call directly,
// alternating call by call. p50/p99 of each in µs and what the local API
// adds at the median.
func BenchmarkLocalAPIPing(b *testing.B) {
	an, a, bID := pingPair(b)
	api := apiPinger(b, a, bID)
	direct := func() {
		if _, err := an.Call(context.Background(), bID, pingAction, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	for range 50 { // warm up
		api()
		direct()
	}
	ad, dd := make([]time.Duration, b.N), make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		api()
		t1 := time.Now()
		direct()
		ad[i], dd[i] = t1.Sub(t0), time.Since(t1)
	}
	b.StopTimer()
	a50, a99 := p50p99(ad)
	d50, d99 := p50p99(dd)
	b.ReportMetric(a50, "api_p50_us")
	b.ReportMetric(a99, "api_p99_us")
	b.ReportMetric(d50, "call_p50_us")
	b.ReportMetric(d99, "call_p99_us")
	b.ReportMetric(a50-d50, "api_added_p50_us")
}

// BenchmarkLocalAPIPingCPU: b.N local API pings alone, for a CPU profile
// (-cpuprofile) of the round trip; cpu_us/call is the process's CPU time
// (both daemons and the client) per call.
func BenchmarkLocalAPIPingCPU(b *testing.B) {
	_, a, bID := pingPair(b)
	api := apiPinger(b, a, bID)
	for range 50 {
		api()
	}
	lat := make([]time.Duration, b.N)
	b.ResetTimer()
	c0 := cpuTime()
	for i := range b.N {
		t0 := time.Now()
		api()
		lat[i] = time.Since(t0)
	}
	cpu := cpuTime() - c0
	b.StopTimer()
	p50, _ := p50p99(lat)
	b.ReportMetric(p50, "api_p50_us")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/call")
}
