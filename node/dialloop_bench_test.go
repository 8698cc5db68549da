//go:build meshsim

package node_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-msgio"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshagent/meshagent/node"
	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/trust"
	"github.com/meshagent/meshagent/wire"
)

// BenchmarkFreshIdentityDialLoop measures what an outsider that re-dials
// a node with a fresh Ed25519 key on every attempt costs that node, and
// what the per-source budget of failed admissions (gate.go) buys.
//
// Three processes, so that the target's CPU is the target's alone (an
// in-process measurement would have to subtract the attacker's key
// generation, host set-up and client handshakes, which cost more than the
// server's side and share the same scheduler):
//
//   - the target: one node in a child process (this test binary started
//     again, TestDialLoopProcess), production admission timeout (5 s),
//     serving read:logs. Its CPU is utime+stime from /proc/PID/stat (all
//     its threads; 10 ms ticks), read by this process before and after
//     each window, less its idle rate (heartbeats, measured first for 2 s
//     with nothing running);
//   - the attacker: a child process of its own that loops from one or 8
//     goroutines: new Ed25519 key, new libp2p host (TLS 1.3 only), TCP
//     dial from a chosen loopback source address, then either a garbage
//     hello on the admission protocol (read until reset), or silence
//     (the connection is held until the target closes it). Its key
//     generation and handshakes run in its own process and are not
//     counted;
//   - this process: one admitted agent (the caller) with a read:logs
//     token, which calls the target from 4 goroutines back to back.
//
// Each sub-benchmark is one attacker: garbage or silent, from one source
// address of its own (127.0.0.2, .3, .4: the budget applies; the caller
// dials from 127.0.0.1) or from a new address of 127.1/16 or 127.2/16 on
// every attempt (the per-source budget never runs out: what the node
// pays without it); garbage/one-ip/sequential dials one attempt at a
// time, the others 8 at once. Two phases each:
//
//  1. the loop alone, the attacker at normal priority: after 1 s of
//     warm-up (most of the budget's burst of 64), 3 s measured: attempts
//     per second, TLS handshakes the target completed per second (its
//     swarm's inbound connections, from its own metrics; the other
//     attempts were closed before or during the handshake, by the gater or
//     by libp2p's resource manager), the target's CPU per attempt and per
//     handshake (µs), and the cores it spent on the loop. Then, the loop
//     still running, a new enrolled agent (from 127.0.0.1) connects and
//     calls, retrying every 100 ms: newcomer_ms is how long that took
//     (10 000: not within 10 s);
//  2. honest calls with and without the loop, in six alternating windows
//     of 1 s each, the attacker started again under the idle CPU
//     scheduling class (chrt --idle), as in the "Honest throughput during
//     each attack" figures: it runs on what CPU the honest agents leave,
//     as an attacker on another machine would, instead of taking one of
//     the two cores from the caller. Reported: calls per second without
//     and with the loop, their ratio, the attempts per second the attacker
//     made during the honest windows, and the target's CPU per honest call
//     in the windows without the loop: the baseline against which an
//     attempt is priced (calls_per_attempt is an attempt's CPU in honest
//     calls). Also the lowest and highest ratio of one pair of windows
//     (the noise), the CPU per honest call of the target and of this
//     process (the caller) with and without the loop, the cores the two
//     got, and the cores the idle-class attacker took: where a drop in
//     throughput comes from. The last sub-benchmark, control/idle-spinner,
//     is phase 2 with an idle-class process that only spins on 8
//     goroutines: what sharing the two cores with any idle-class process
//     costs the honest calls, without a single dial.
//
// Heavy (about two minutes): it runs only when -bench names it (not in
// make bench, never in make test); make bench-dialloop runs
//
//	go test ./node -run '^$' -bench FreshIdentityDialLoop -benchtime 1x
//
// With MESHAGENT_DIALLOOP_PROFILE=DIR the target also writes a CPU
// profile of each loop-alone window to DIR.
func BenchmarkFreshIdentityDialLoop(b *testing.B) {
	if f := flag.Lookup("test.bench"); f == nil || !strings.Contains(f.Value.String(), "FreshIdentity") {
		b.Skip("heavy (about two minutes): run it by name, -bench FreshIdentityDialLoop")
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Thousands of calls a second would fill the caller's share of a
	// 5-minute replay cache of the target's replies (and the target's of
	// the caller's requests): both run a 10 s window, as in the attack stage.
	m, err := simulations.NewMesh(ctx, []string{"caller"}, simulations.Options{Transport: "tcp",
		Configure: func(_ string, c *node.Config) { c.ReplayWindow = 10 * time.Second }})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	tgt, err := startTarget(ctx, b, self, m.Anchor)
	if err != nil {
		b.Fatal(err)
	}
	defer tgt.stop()
	caller := m.Agents["caller"].Node
	if err := caller.Join(ctx, tgt.ai, node.KeepConnected()); err != nil {
		b.Fatal(err)
	}
	if _, err := m.Grant("caller", []string{"read:logs"}, nil, time.Hour); err != nil {
		b.Fatal(err)
	}
	if err := simulations.WaitFor(10*time.Second, func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := caller.Call(cctx, tgt.ai.ID, "read:logs", nil, nil)
		return err
	}); err != nil {
		b.Fatalf("honest call before the loop: %v", err)
	}
	hc := honestCallers{n: caller, to: tgt.ai.ID, workers: 4}
	hc.window(ctx, 500*time.Millisecond) // warm up
	idle := tgt.cpu()
	time.Sleep(2 * time.Second)
	idleRate := (tgt.cpu() - idle).Seconds() / 2 // target's cores when nothing runs

	run := &dialLoopRun{self: self, m: m, tgt: tgt, hc: hc, idleRate: idleRate}
	for _, v := range []dialLoopVariant{
		{"garbage/one-ip/sequential", "garbage", netip.MustParseAddr("127.0.0.2"), false, 1},
		{"garbage/one-ip", "garbage", netip.MustParseAddr("127.0.0.3"), false, 8},
		{"silent/one-ip", "silent", netip.MustParseAddr("127.0.0.4"), false, 8},
		{"garbage/many-ips", "garbage", netip.MustParseAddr("127.1.0.1"), true, 8},
		{"silent/many-ips", "silent", netip.MustParseAddr("127.2.0.1"), true, 8},
		// The control: no dial at all, 8 goroutines spinning under the
		// idle class; what sharing two cores with any idle-class process
		// costs the honest calls.
		{"control/idle-spinner", "spin", netip.Addr{}, false, 8},
	} {
		b.Run(v.name, func(b *testing.B) { run.variant(ctx, b, v) })
	}
}

type dialLoopVariant struct {
	name, mode string     // mode: garbage, silent, or spin (the control)
	src        netip.Addr // first source address
	many       bool       // a new source address each attempt
	dialers    int        // attempts at once
}

type dialLoopRun struct {
	self     string
	m        *simulations.Mesh
	tgt      *dialLoopTarget
	hc       honestCallers
	idleRate float64 // the target's cores with nothing running
	offset   int     // next address of the many-address attackers
}

func (r *dialLoopRun) spec(v dialLoopVariant) dialLoopSpec {
	spec := dialLoopSpec{Role: "attacker", Target: r.tgt.addr, Mode: v.mode, Offset: r.offset, Workers: v.dialers, Sources: 1}
	if v.src.IsValid() {
		spec.Source = v.src.String()
	}
	if v.many {
		spec.Sources = 1 << 16
	}
	return spec
}

func (r *dialLoopRun) variant(ctx context.Context, b *testing.B, v dialLoopVariant) {
	b.ReportMetric(0, "ns/op")
	var attemptCPU float64 // the target's, per attempt of the loop alone
	if v.mode != "spin" {
		attemptCPU = r.alone(ctx, b, v)
	}
	r.honest(ctx, b, v, attemptCPU)
	b.ReportMetric(r.tgt.rssMiB(), "target_rss_MiB")
}

// alone runs phase 1 (the loop alone) and returns the target's CPU per
// attempt, in seconds.
func (r *dialLoopRun) alone(ctx context.Context, b *testing.B, v dialLoopVariant) float64 {
	tgt := r.tgt
	att, err := startAttacker(ctx, r.self, r.spec(v), false)
	if err != nil {
		b.Fatal(err)
	}
	att.send("on")
	time.Sleep(time.Second)
	if dir := os.Getenv(dialLoopProfileEnv); dir != "" {
		tgt.send("profile " + filepath.Join(dir, strings.ReplaceAll(v.name, "/", "-")+".pprof"))
	}
	a0, o0, c0 := att.stats(), tgt.stats(), tgt.cpu()
	const measure = 3 * time.Second
	time.Sleep(measure)
	a1, o1, c1 := att.stats(), tgt.stats(), tgt.cpu()
	tgt.send("unprofile")
	// Can a new agent (not from the attacker's address) still get in?
	newcomerMs := 1e4
	if d, err := newcomer(ctx, r.m, "newcomer-"+strings.ReplaceAll(v.name, "/", "-"), tgt.ai); err != nil {
		b.Logf("a new agent could not call the target during the loop: %v", err)
	} else {
		newcomerMs = float64(d.Microseconds()) / 1e3
	}
	if sent := att.end(); v.many {
		r.offset += sent
	}
	attempts := float64(a1.attempts - a0.attempts)
	handshakes := float64(o1.opened - o0.opened)
	loopCPU := (c1 - c0).Seconds() - r.idleRate*measure.Seconds()
	if attempts == 0 {
		b.Fatal("the attacker made no attempt")
	}
	if a1.failed > a0.failed {
		b.Logf("%d attempts timed out", a1.failed-a0.failed)
	}
	b.ReportMetric(attempts/measure.Seconds(), "attempts/s")
	b.ReportMetric(handshakes/measure.Seconds(), "handshakes/s")
	b.ReportMetric(max(attempts-handshakes, 0)/measure.Seconds(), "refused_before_tls/s")
	b.ReportMetric(loopCPU/measure.Seconds(), "target_cores")
	b.ReportMetric(loopCPU/attempts*1e6, "target_us/attempt")
	if handshakes > 0 {
		b.ReportMetric(loopCPU/handshakes*1e6, "target_us/handshake")
	}
	b.ReportMetric(newcomerMs, "newcomer_ms")
	return loopCPU / attempts
}

// honest runs phase 2: honest calls in windows with and without the loop
// (or the control), which runs under the idle scheduling class.
func (r *dialLoopRun) honest(ctx context.Context, b *testing.B, v dialLoopVariant, attemptCPU float64) {
	tgt, hc := r.tgt, r.hc
	att, err := startAttacker(ctx, r.self, r.spec(v), true)
	if err != nil {
		b.Fatal(err)
	}
	att.send("on")
	if err := simulations.WaitFor(10*time.Second, func() error {
		if att.stats().attempts == 0 {
			return errors.New("the idle-class attacker has not made an attempt yet")
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	const rounds, w, settle = 6, time.Second, 250 * time.Millisecond
	self, apid := os.Getpid(), att.Pid()
	var base, under honestResult
	var baseCPU, underCPU, baseSelf, underSelf, underAtt time.Duration
	var underAttempts int64
	lo, hi := 1e9, 0.0 // per-round ratios
	for range rounds {
		s0, t0, p0, q0 := att.stats(), tgt.cpu(), procCPU(self), procCPU(apid)
		u := hc.window(ctx, w)
		underCPU += tgt.cpu() - t0
		underSelf += procCPU(self) - p0
		underAtt += procCPU(apid) - q0
		underAttempts += att.stats().attempts - s0.attempts
		att.send("off")
		time.Sleep(settle)
		t0, p0 = tgt.cpu(), procCPU(self)
		o := hc.window(ctx, w)
		baseCPU += tgt.cpu() - t0
		baseSelf += procCPU(self) - p0
		att.send("on")
		time.Sleep(settle)
		under.add(u)
		base.add(o)
		ratio := u.perSecond() / o.perSecond()
		lo, hi = min(lo, ratio), max(hi, ratio)
	}
	if sent := att.end(); v.many {
		r.offset += sent
	}
	if base.failed+under.failed > 0 {
		b.Errorf("honest calls failed: %d without the loop, %d with it (%v)", base.failed, under.failed, under.lastErr)
	}
	callCPU := (baseCPU.Seconds() - r.idleRate*base.elapsed.Seconds()) / float64(base.calls)
	underCallCPU := (underCPU.Seconds() - r.idleRate*under.elapsed.Seconds()) / float64(under.calls)
	b.ReportMetric(base.perSecond(), "honest_calls/s")
	b.ReportMetric(under.perSecond(), "under_calls/s")
	b.ReportMetric(under.perSecond()/base.perSecond(), "honest_ratio")
	b.ReportMetric(lo, "honest_ratio_min")
	b.ReportMetric(hi, "honest_ratio_max")
	b.ReportMetric(callCPU*1e6, "target_us/call")
	b.ReportMetric(underCallCPU*1e6, "under_target_us/call")
	b.ReportMetric(baseSelf.Seconds()/float64(base.calls)*1e6, "caller_us/call")
	b.ReportMetric(underSelf.Seconds()/float64(under.calls)*1e6, "under_caller_us/call")
	// The cores the honest pair (target and caller) got, and the idle-class
	// attacker's.
	b.ReportMetric((baseCPU+baseSelf).Seconds()/base.elapsed.Seconds(), "honest_cores")
	b.ReportMetric((underCPU+underSelf).Seconds()/under.elapsed.Seconds(), "under_honest_cores")
	b.ReportMetric(underAtt.Seconds()/under.elapsed.Seconds(), "under_attacker_cores")
	if v.mode != "spin" {
		b.ReportMetric(float64(underAttempts)/under.elapsed.Seconds(), "under_attempts/s")
		b.ReportMetric(attemptCPU/callCPU, "calls_per_attempt")
	}
}

// newcomer starts a new enrolled agent and returns how long it takes to
// connect to the target and get a call through, retrying every 100 ms for
// up to 10 s.
func newcomer(ctx context.Context, m *simulations.Mesh, name string, target peer.AddrInfo) (time.Duration, error) {
	a, err := m.Add(ctx, name, true, simulations.Options{Transport: "tcp"})
	if err != nil {
		return 0, err
	}
	defer a.Node.Close()
	if _, err := m.Grant(name, []string{"read:logs"}, nil, time.Hour); err != nil {
		return 0, err
	}
	start := time.Now()
	for {
		tctx, cancel := context.WithTimeout(network.WithForceDirectDial(ctx, "retry"), 2*time.Second)
		err = a.Node.Join(tctx, target)
		if err == nil {
			_, err = a.Node.Call(tctx, target.ID, "read:logs", nil, nil)
		}
		cancel()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > 10*time.Second {
			return 0, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dialLoopEnv, when set, makes TestDialLoopProcess run one process of
// BenchmarkFreshIdentityDialLoop: its value is the process's spec (JSON).
const dialLoopEnv = "MESHAGENT_DIALLOOP"

// dialLoopProfileEnv, when set, names a directory where the target writes
// a CPU profile of each loop-alone window, VARIANT.pprof (the variant's
// slash made a dash): go tool pprof -top FILE.
const dialLoopProfileEnv = "MESHAGENT_DIALLOOP_PROFILE"

type dialLoopSpec struct {
	Role string `json:"role"` // "target" or "attacker"
	// target
	Dir        string `json:"dir,omitempty"` // holds identity.pem
	Anchor     string `json:"anchor,omitempty"`
	Credential []byte `json:"credential,omitempty"`
	// attacker
	Target  string `json:"target,omitempty"` // multiaddr ending in /p2p/ID
	Mode    string `json:"mode,omitempty"`   // "garbage" or "silent"
	Source  string `json:"source,omitempty"` // first source address
	Sources int    `json:"sources,omitempty"`
	Offset  int    `json:"offset,omitempty"` // first source used: Source + Offset mod Sources
	Workers int    `json:"workers,omitempty"`
}

// TestDialLoopProcess is not a test: BenchmarkFreshIdentityDialLoop
// starts this binary again with dialLoopEnv set to run its target or its
// attacker here. Commands come on stdin, answers go to stdout.
func TestDialLoopProcess(t *testing.T) {
	raw := os.Getenv(dialLoopEnv)
	if raw == "" {
		t.Skip("a helper process of BenchmarkFreshIdentityDialLoop")
	}
	var spec dialLoopSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	var err error
	switch spec.Role {
	case "target":
		err = runDialLoopTarget(spec)
	case "attacker":
		err = runDialLoopAttacker(spec)
	default:
		err = fmt.Errorf("unknown role %q", spec.Role)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// runDialLoopTarget runs the target node until stdin closes; "stats"
// prints its inbound connections (completed TLS handshakes) so far.
func runDialLoopTarget(spec dialLoopSpec) error {
	id, err := trust.LoadIdentity(filepath.Join(spec.Dir, "identity.pem"))
	if err != nil {
		return err
	}
	anchor, err := trust.ParsePublicKey(spec.Anchor)
	if err != nil {
		return err
	}
	cred, err := trust.ParseCredential(spec.Credential)
	if err != nil {
		return err
	}
	cfg := node.LocalConfig()
	cfg.Identity, cfg.Credential, cfg.Policy = id, cred, trust.DefaultPolicy(anchor)
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.AdmissionTimeout = node.DefaultConfig().AdmissionTimeout
	cfg.ReplayWindow = 10 * time.Second // see the caller's
	reg := prometheus.NewRegistry()
	cfg.Prometheus = reg
	n, err := node.New(cfg)
	if err != nil {
		return err
	}

	if err := n.Start(context.Background()); err != nil {
		return err
	}
	defer n.Close()
	if err := n.Handle("read:logs", func(_ context.Context, r *node.Request) ([]byte, error) {
		return append([]byte("logs for "), r.Body...), nil
	}); err != nil {
		return err
	}
	fmt.Printf("addr %s\n", n.Addrs()[0])
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch f := strings.Fields(in.Text()); {
		case len(f) == 1 && f[0] == "stats":
			fmt.Printf("stats %d\n", inboundOpened(reg))
		case len(f) == 2 && f[0] == "profile" && prof == nil:
			if prof, err = os.Create(f[1]); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(prof); err != nil {
				return err
			}
		case len(f) == 1 && f[0] == "unprofile" && prof != nil:
			pprof.StopCPUProfile()
			prof.Close()
			prof = nil
		}
	}
	return nil
}

// inboundOpened is the target swarm's count of inbound connections that
// completed the TLS handshake and the secured-connection gater.
func inboundOpened(reg *prometheus.Registry) int64 {
	mfs, _ := reg.Gather()
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "libp2p_swarm_connections_opened_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "dir" && l.GetValue() == "inbound" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return int64(n)
}

// runDialLoopAttacker runs the fresh-identity dial loop while "on" (until
// "off"); "stats" prints attempts, completed handshakes, attempts refused
// before or during the handshake, and attempts that timed out; "end" (or
// the end of stdin) closes every held connection and prints the number of
// source addresses used.
func runDialLoopAttacker(spec dialLoopSpec) error {
	target, err := peer.AddrInfoFromString(spec.Target)
	if err != nil {
		return err
	}
	var base uint32
	if spec.Mode != "spin" {
		first, err := netip.ParseAddr(spec.Source)
		if err != nil {
			return err
		}
		base = binary.BigEndian.Uint32(first.AsSlice())
	}
	var on atomic.Bool
	var next, attempts, handshakes, refused, failed atomic.Int64
	next.Store(int64(spec.Offset))
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{}, 1024) // silent connections held at once
	var wg, holders sync.WaitGroup
	for range spec.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var spin [32]byte
			for ctx.Err() == nil {
				if !on.Load() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if spec.Mode == "spin" { // the control: 1 ms of work per "attempt"
					for t := time.Now(); time.Since(t) < time.Millisecond; {
						spin = sha256.Sum256(spin[:])
					}
					attempts.Add(1)
					continue
				}
				i := next.Add(1) - 1
				ip := make(net.IP, 4)
				binary.BigEndian.PutUint32(ip, base+uint32(i%int64(spec.Sources)))
				switch dialOnce(ctx, *target, ip, spec.Mode, held, &holders) {
				case attemptHandshake:
					handshakes.Add(1)
				case attemptRefused:
					refused.Add(1)
				case attemptFailed:
					failed.Add(1)
				}
				attempts.Add(1)
			}
		}()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "on":
			on.Store(true)
		case "off":
			on.Store(false)
		case "stats":
			fmt.Printf("stats %d %d %d %d\n", attempts.Load(), handshakes.Load(), refused.Load(), failed.Load())
		case "end":
			on.Store(false)
			cancel()
			wg.Wait()
			holders.Wait()
			fmt.Printf("end %d\n", min(next.Load()-int64(spec.Offset), int64(spec.Sources)))
			return nil
		}
	}
	cancel()
	wg.Wait()
	holders.Wait()
	return nil
}

const (
	attemptHandshake = iota // the target completed the TLS handshake
	attemptRefused          // closed before or during the handshake
	attemptFailed           // timed out
	attemptLocal            // the attacker could not even start
)

// dialOnce is one attempt of the loop: a fresh key and host, a TLS dial
// from ip, then a garbage hello, or silence until the target closes the
// connection.
func dialOnce(ctx context.Context, target peer.AddrInfo, ip net.IP, mode string, held chan struct{}, holders *sync.WaitGroup) int {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return attemptLocal
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.NoListenAddrs,
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) { return d, nil })),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		return attemptLocal
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Connect(cctx, target); err != nil {
		h.Close()
		if cctx.Err() != nil {
			return attemptFailed
		}
		return attemptRefused
	}
	if mode == "silent" {
		select {
		case held <- struct{}{}:
		case <-ctx.Done():
			h.Close()
			return attemptHandshake
		}
		holders.Add(1)
		go func() {
			defer holders.Done()
			defer func() { <-held }()
			defer h.Close()
			for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && ctx.Err() == nil; {
				if h.Network().Connectedness(target.ID) != network.Connected {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		return attemptHandshake
	}
	if s, err := h.NewStream(cctx, target.ID, wire.ProtocolAdmission); err == nil {
		_ = msgio.NewVarintWriter(s).WriteMsg([]byte("not a hello"))
		_, _ = s.Read(make([]byte, 1)) // until the target resets it
	}
	h.Close()
	return attemptHandshake
}

// helper is a child process of the benchmark, driven over stdin/stdout.
type helper struct{ *simulations.Child }

func startHelper(ctx context.Context, spec dialLoopSpec, name string, args ...string) (*helper, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, name, append(args, "-test.run=^TestDialLoopProcess$", "-test.count=1")...)
	cmd.Env = append(os.Environ(), dialLoopEnv+"="+string(raw))
	c, err := simulations.StartChild(cmd)
	if err != nil {
		return nil, err
	}
	return &helper{c}, nil
}

func (h *helper) send(cmd string) { h.Send(cmd) }

// expect returns the fields after the next line that starts with word.
func (h *helper) expect(word string) []string { return h.Expect(word, 30*time.Second) }

func (h *helper) stop() { _ = h.Stop(30 * time.Second) }

type dialLoopTarget struct {
	*helper
	ai   peer.AddrInfo
	addr string
	dir  string
}

func startTarget(ctx context.Context, b *testing.B, self string, anchor *trust.AnchorKey) (*dialLoopTarget, error) {
	id, err := trust.GenerateIdentity(rand.Reader)
	if err != nil {
		return nil, err
	}
	cred, err := trust.IssueCredential(anchor, id.Public(), "target", time.Now().Add(-time.Second), time.Hour)
	if err != nil {
		return nil, err
	}
	dir := b.TempDir()
	if err := id.Save(filepath.Join(dir, "identity.pem")); err != nil {
		return nil, err
	}
	h, err := startHelper(ctx, dialLoopSpec{Role: "target", Dir: dir, Anchor: anchor.Public().String(), Credential: cred.Bytes()}, self)
	if err != nil {
		return nil, err
	}
	f := h.expect("addr")
	if len(f) != 1 {
		h.stop()
		return nil, errors.New("the target did not start")
	}
	ai, err := peer.AddrInfoFromString(f[0])
	if err != nil {
		h.stop()
		return nil, err
	}
	return &dialLoopTarget{helper: h, ai: *ai, addr: f[0], dir: dir}, nil
}

type targetStats struct{ opened int64 }

func (t *dialLoopTarget) stats() targetStats {
	t.send("stats")
	f := t.expect("stats")
	if len(f) != 1 {
		return targetStats{}
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return targetStats{opened: n}
}

// cpu returns the target process's utime+stime (all its threads).
func (t *dialLoopTarget) cpu() time.Duration { return procCPU(t.Pid()) }

// procCPU returns a process's utime+stime (all its threads).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces): state
	// is the first, utime the twelfth, stime the thirteenth.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTick = 10 * time.Millisecond // USER_HZ = 100 on Linux
	return time.Duration(ut+st) * clockTick
}

// rssMiB returns the target process's resident memory.
func (t *dialLoopTarget) rssMiB() float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", t.Pid()))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

type dialLoopAttacker struct{ *helper }

type attackerStats struct{ attempts, handshakes, refused, failed int64 }

// startAttacker starts the loop's process, under the idle CPU scheduling
// class when idle (nice 19 where chrt is missing).
func startAttacker(ctx context.Context, self string, spec dialLoopSpec, idle bool) (*dialLoopAttacker, error) {
	var h *helper
	var err error
	switch _, lookErr := exec.LookPath("chrt"); {
	case !idle:
		h, err = startHelper(ctx, spec, self)
	case lookErr == nil:
		h, err = startHelper(ctx, spec, "chrt", "--idle", "0", self)
	default:
		h, err = startHelper(ctx, spec, "nice", "-n", "19", self)
	}
	if err != nil {
		return nil, err
	}
	if h.expect("ready") == nil {
		h.stop()
		return nil, errors.New("the attacker did not start")
	}
	return &dialLoopAttacker{h}, nil
}

func (a *dialLoopAttacker) stats() attackerStats {
	a.send("stats")
	f := a.expect("stats")
	if len(f) != 4 {
		return attackerStats{}
	}
	var v [4]int64
	for i := range v {
		v[i], _ = strconv.ParseInt(f[i], 10, 64)
	}
	return attackerStats{v[0], v[1], v[2], v[3]}
}

// end stops the loop and returns how many source addresses it used.
func (a *dialLoopAttacker) end() int {
	a.send("end")
	f := a.expect("end")
	a.stop()
	if len(f) != 1 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// honestCallers call one action of one peer from several goroutines.
type honestCallers struct {
	n       *node.Node
	to      peer.ID
	workers int
}

type honestResult struct {
	calls, failed int
	elapsed       time.Duration
	lastErr       error
}

func (r *honestResult) add(o honestResult) {
	r.calls += o.calls
	r.failed += o.failed
	r.elapsed += o.elapsed
	if o.lastErr != nil {
		r.lastErr = o.lastErr
	}
}

func (r honestResult) perSecond() float64 { return float64(r.calls) / r.elapsed.Seconds() }

// window calls back to back for d; a call that ends after d is not
// counted (a stall shows as lost throughput, not as a longer window).
func (hc honestCallers) window(ctx context.Context, d time.Duration) honestResult {
	var mu sync.Mutex
	var res honestResult
	var wg sync.WaitGroup
	body := make([]byte, 100)
	start := time.Now()
	for range hc.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d {
				_, err := hc.n.Call(ctx, hc.to, "read:logs", body, nil)
				if time.Since(start) > d {
					return
				}
				mu.Lock()
				if err != nil {
					res.failed++
					res.lastErr = err
				} else {
					res.calls++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.elapsed = d
	return res
}
