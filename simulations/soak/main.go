// Command soak runs two meshagent daemons on loopback, loads one from the
// other with `meshagent bench` at full speed for a long time (10 minutes
// by default, twice the replay window), samples each daemon's memory from
// its /metrics every 10 s, and writes a CSV, PNG plots and a Markdown
// summary with the issue 12 goals: zero refusals, the last minute's
// throughput within 10 % of the first's, memory flat after the first
// window (make soak).
//
//	go run ./simulations/soak -meshagent bin/meshagent -duration 10m -out docs
//
// Every process is real: the daemons and the load generator run as
// separate processes of the meshagent binary, so that each daemon's RSS is
// its own. It exits 1 when a goal it measured is not met.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshagent/meshagent/protocol"
	"github.com/meshagent/meshagent/simulations/chart"
)

func main() {
	cfg := config{}
	flag.StringVar(&cfg.bin, "meshagent", "", "the meshagent binary (default: build ./cmd/meshagent into a temporary directory)")
	flag.DurationVar(&cfg.duration, "duration", envDuration("SOAK_DURATION", 10*time.Minute), "how long the load runs (env SOAK_DURATION)")
	flag.IntVar(&cfg.concurrency, "concurrency", 4, "bench workers")
	flag.StringVar(&cfg.action, "action", "ping:agent", "action called (every daemon serves ping:agent itself)")
	flag.DurationVar(&cfg.every, "sample", 10*time.Second, "memory sampling interval")
	flag.StringVar(&cfg.out, "out", "docs", "directory for soak-report.md; plots and CSV go to its img/")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary homes (daemon logs, audit logs)")
	flag.StringVar(&cfg.commit, "commit", "", "the commit the binary was built from, for the report (default: this tree's HEAD, marked if the tree has uncommitted changes)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	met, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !met {
		fmt.Fprintln(os.Stderr, "soak: a goal is not met (see the report)")
		os.Exit(1)
	}
}

type config struct {
	bin         string
	duration    time.Duration
	concurrency int
	action      string
	every       time.Duration
	out         string
	keep        bool
	commit      string
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "soak: %s=%q is not a duration; using %s\n", name, v, def)
	}
	return def
}

// daemon is one running `meshagent run`.
type daemon struct {
	name, home, id string
	cmd            *exec.Cmd
	api            *http.Client
	exited         chan error
}

// sample is one reading of a daemon's /metrics.
type sample struct {
	t                          time.Duration // since the load started
	daemon                     string
	rss, heapAlloc, heapInuse  float64 // bytes
	goroutines, cpu, decisions float64 // count, seconds, audited decisions
	nonces                     float64 // the replay guard's (meshagent_replay_nonces)
}

func run(ctx context.Context, cfg config) (met bool, err error) {
	tmp, err := os.MkdirTemp("", "meshagent-soak-")
	if err != nil {
		return false, err
	}
	if cfg.keep {
		fmt.Fprintln(os.Stderr, "soak: homes kept in", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	if cfg.bin == "" {
		cfg.bin = filepath.Join(tmp, "meshagent")
		fmt.Fprintln(os.Stderr, "soak: building ./cmd/meshagent")
		if out, err := exec.Command("go", "build", "-o", cfg.bin, "./cmd/meshagent").CombinedOutput(); err != nil {
			return false, fmt.Errorf("go build: %v: %s", err, out)
		}
	}
	m := &meshagent{bin: cfg.bin}

	// A CA, two agents, a token for alice to call the action on bob.
	ca := filepath.Join(tmp, "ca")
	anchor, err := m.out("ca", "init", "--dir", ca)
	if err != nil {
		return false, err
	}
	alice := &daemon{name: "alice", home: filepath.Join(tmp, "alice")}
	bob := &daemon{name: "bob", home: filepath.Join(tmp, "bob")}
	for _, d := range []*daemon{alice, bob} {
		if d.id, err = m.out("init", "--home", d.home, "--name", d.name); err != nil {
			return false, err
		}
		if _, err = m.out("ca", "issue", "--dir", ca, "--agent", d.id, "--name", d.name, "--out", filepath.Join(d.home, "credential.pem")); err != nil {
			return false, err
		}
	}
	token := filepath.Join(alice.home, "alice.token")
	if _, err = m.out("token", "issue", "--ca", ca, "--to", alice.id, "--scopes", cfg.action, "--ttl", "24h", "--out", token); err != nil {
		return false, err
	}

	// bob first; alice bootstraps from him. TCP only, on loopback.
	listen := "/ip4/127.0.0.1/tcp/0"
	if err := m.start(ctx, bob, "--anchor", anchor, "--listen", listen); err != nil {
		return false, err
	}
	defer bob.stop()
	var st struct {
		ListenAddrs []string `json:"listen_addrs"`
	}
	if err := bob.get(ctx, "/v1/status", &st); err != nil || len(st.ListenAddrs) == 0 {
		return false, fmt.Errorf("bob's status: %v %v", st, err)
	}
	if err := m.start(ctx, alice, "--anchor", anchor, "--listen", listen, "--token", token, "--bootstrap", st.ListenAddrs[0]); err != nil {
		return false, err
	}
	defer alice.stop()
	if err := waitAdmitted(ctx, alice, bob.id); err != nil {
		return false, err
	}

	// Sample both daemons every cfg.every while bench runs.
	start := time.Now()
	var samples []sample
	var benchPID int
	take := func() {
		t := time.Since(start)
		for _, d := range []*daemon{alice, bob} {
			if s, err := d.sample(ctx, t); err == nil {
				samples = append(samples, s)
			} else {
				fmt.Fprintf(os.Stderr, "soak: sampling %s: %v\n", d.name, err)
			}
		}
		// The machine is shared: what every process used, and the load
		// generator, so that the report can tell the others' share.
		if busy, ok := hostCPU(); ok {
			samples = append(samples, sample{t: t, daemon: "host", cpu: busy})
		}
		if c, ok := processCPU(benchPID); ok {
			samples = append(samples, sample{t: t, daemon: "bench", cpu: c})
		}
	}
	take()
	samples = append(samples, sample{t: time.Since(start), daemon: "bench"}) // not started yet
	benchArgs := []string{"bench", "--home", alice.home, "--to", bob.id, "--action", cfg.action,
		"--concurrency", strconv.Itoa(cfg.concurrency), "--duration", cfg.duration.String(), "--json"}
	bench := exec.CommandContext(ctx, cfg.bin, benchArgs...)
	var benchOut bytes.Buffer
	bench.Stdout, bench.Stderr = &benchOut, os.Stderr
	if err := bench.Start(); err != nil {
		return false, err
	}
	benchPID = bench.Process.Pid
	benchDone := make(chan error, 1)
	go func() { benchDone <- bench.Wait() }()
	tick := time.NewTicker(cfg.every)
	var benchErr error
sampling:
	for {
		select {
		case benchErr = <-benchDone:
			break sampling
		case <-tick.C:
			take()
		case err := <-alice.exited:
			return false, fmt.Errorf("alice's daemon exited during the run: %v (log: %s)", err, filepath.Join(alice.home, "daemon.log"))
		case err := <-bob.exited:
			return false, fmt.Errorf("bob's daemon exited during the run: %v (log: %s)", err, filepath.Join(bob.home, "daemon.log"))
		}
	}
	tick.Stop()
	benchPID = 0
	take()
	if ps := bench.ProcessState; ps != nil {
		samples = append(samples, sample{t: time.Since(start), daemon: "bench", cpu: (ps.UserTime() + ps.SystemTime()).Seconds()})
	}
	if benchErr != nil {
		return false, fmt.Errorf("meshagent bench: %v", benchErr)
	}
	var sum benchSummary
	if err := json.Unmarshal(benchOut.Bytes(), &sum); err != nil {
		return false, fmt.Errorf("bench printed %q: %v", benchOut.String(), err)
	}
	refused := map[string]map[string]float64{}
	for _, d := range []*daemon{alice, bob} {
		page, err := d.metrics(ctx)
		if err != nil {
			return false, err
		}
		refused[d.name] = rejections(page)
	}

	r := &report{cfg: cfg, bench: sum, benchJSON: benchOut.Bytes(), benchCmd: "meshagent " + strings.Join(benchArgs, " "), samples: samples,
		refused: refused, window: protocol.DefaultWindow, started: start}
	return r.write()
}

// meshagent runs the CLI.
type meshagent struct{ bin string }

func (m *meshagent) out(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	c := exec.Command(m.bin, args...)
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("meshagent %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// start runs `meshagent run` for d, its output in d.home/daemon.log, and
// waits until its local API answers.
func (m *meshagent) start(ctx context.Context, d *daemon, flags ...string) error {
	logf, err := os.Create(filepath.Join(d.home, "daemon.log"))
	if err != nil {
		return err
	}
	d.cmd = exec.Command(m.bin, append([]string{"run", "--home", d.home}, flags...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	d.exited = make(chan error, 1)
	go func() { d.exited <- d.cmd.Wait(); logf.Close() }()
	sock := filepath.Join(d.home, "api.sock")
	d.api = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st map[string]any
		err := d.get(ctx, "/v1/status", &st)
		if err == nil {
			return nil
		}
		select {
		case e := <-d.exited:
			d.exited <- e
			log, _ := os.ReadFile(filepath.Join(d.home, "daemon.log"))
			return fmt.Errorf("%s's daemon exited at start: %v: %s", d.name, e, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s's daemon did not answer in 30 s: %v", d.name, err)
		}
	}
}

// stop ends the daemon with SIGTERM, and kills it if it has not exited
// within 10 s.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *daemon) get(ctx context.Context, path string, out any) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://meshagent"+path, nil)
	resp, err := d.api.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: HTTP %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (d *daemon) metrics(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://meshagent/metrics", nil)
	resp, err := d.api.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (d *daemon) sample(ctx context.Context, t time.Duration) (sample, error) {
	page, err := d.metrics(ctx)
	if err != nil {
		return sample{}, err
	}
	s := sample{t: t, daemon: d.name, rss: metric(page, "process_resident_memory_bytes"),
		heapAlloc: metric(page, "go_memstats_heap_alloc_bytes"), heapInuse: metric(page, "go_memstats_heap_inuse_bytes"),
		goroutines: metric(page, "go_goroutines"), cpu: metric(page, "process_cpu_seconds_total"),
		decisions: metric(page, "meshagent_decisions_total"), nonces: metric(page, "meshagent_replay_nonces")}
	if s.rss == 0 || s.heapInuse == 0 {
		return s, errors.New("no process_resident_memory_bytes or go_memstats_heap_inuse_bytes in /metrics")
	}
	return s, nil
}

// clockTick is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTick = 100

// hostCPU is the CPU time every process of the machine has used, in
// seconds (Linux /proc/stat; false elsewhere).
func hostCPU() (float64, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, false
	}
	busy := 0.0
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseFloat(f[i], 64)
		busy += v
	}
	return busy / clockTick, true
}

// processCPU is the CPU time process pid has used, in seconds.
func processCPU(pid int) (float64, bool) {
	if pid == 0 {
		return 0, false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:])) // state ppid ... utime (12th) stime
	if i < 0 || len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTick, true
}

// waitAdmitted waits until d lists peer as alive.
func waitAdmitted(ctx context.Context, d *daemon, peer string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var peers []struct {
			PeerID string `json:"peer_id"`
			State  string `json:"state"`
		}
		if err := d.get(ctx, "/v1/peers", &peers); err == nil {
			for _, p := range peers {
				if p.PeerID == peer && p.State == "alive" {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not admit %s within 30 s: %+v", d.name, peer, peers)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metric adds the samples of the metric name on a Prometheus text page
// whose labels hold every one of labels (each `key="value"`).
func metric(page, name string, labels ...string) float64 {
	sum := 0.0
	for _, l := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(l, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		all := true
		for _, want := range labels {
			all = all && strings.Contains(rest, want)
		}
		f := strings.Fields(rest)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); all && err == nil {
			sum += v
		}
	}
	return sum
}

// rejections counts a daemon's rejected decisions by reason, and the
// requests it refused unchecked (throttled).
func rejections(page string) map[string]float64 {
	out := map[string]float64{}
	for _, l := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(l, "meshagent_decisions_total{")
		if !ok || !strings.Contains(rest, `decision="reject"`) {
			continue
		}
		reason := "?"
		if _, after, ok := strings.Cut(rest, `reason="`); ok {
			reason, _, _ = strings.Cut(after, `"`)
		}
		f := strings.Fields(rest)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > 0 {
			out[reason] += v
		}
	}
	if v := metric(page, "meshagent_throttled_requests_total"); v > 0 {
		out["(throttled, unchecked)"] = v
	}
	return out
}

// benchSummary is the part of `meshagent bench --json` the report uses.
type benchSummary struct {
	Concurrency  int              `json:"concurrency"`
	Seconds      float64          `json:"seconds"`
	Calls        int64            `json:"calls"`
	OK           int64            `json:"ok"`
	Errors       int64            `json:"errors"`
	ErrorsByCode map[string]int64 `json:"errors_by_code"`
	CallsPerS    float64          `json:"calls_per_s"`
	OKPerS       float64          `json:"ok_per_s"`
	Latency      *struct {
		P50  float64 `json:"p50"`
		P90  float64 `json:"p90"`
		P99  float64 `json:"p99"`
		P999 float64 `json:"p99_9"`
		Max  float64 `json:"max"`
	} `json:"latency_ms"`
	Timeline []struct {
		Second int   `json:"second"`
		Calls  int64 `json:"calls"`
		Errors int64 `json:"errors"`
	} `json:"timeline"`
}

type report struct {
	cfg       config
	bench     benchSummary
	benchJSON []byte // as bench wrote it
	benchCmd  string
	samples   []sample
	refused   map[string]map[string]float64
	window    time.Duration
	started   time.Time
}

// bucket is the passed calls and errors a second over one span of the run.
type bucket struct {
	from, to    int // seconds
	okS, errorS float64
}

// buckets groups the bench timeline into spans of span seconds, whole
// spans only.
func (r *report) buckets(span int) []bucket {
	var out []bucket
	full := int(r.cfg.duration.Seconds()) / span
	for i := 0; i < full; i++ {
		b := bucket{from: i * span, to: (i + 1) * span}
		for _, row := range r.bench.Timeline {
			if row.Second > b.from && row.Second <= b.to {
				b.okS += float64(row.Calls - row.Errors)
				b.errorS += float64(row.Errors)
			}
		}
		b.okS /= float64(span)
		b.errorS /= float64(span)
		out = append(out, b)
	}
	return out
}

// memoryVerdict is what a daemon's samples say about its memory after
// the replay window's first turn: the growth of its mean reading from the
// minute after the window to the last minute, and the least-squares slope
// over every sample after the window (bytes a minute). measured is false
// when the run is too short to tell (under the window + 2 minutes).
type memoryVerdict struct {
	measured bool
	// heap in use
	start, atWindow, peakAfter, end float64
	growth, slopePerMin             float64
	// resident set
	rssMax, rssEnd, rssGrowth, rssSlope float64
}

func (r *report) memory(name string) memoryVerdict {
	var v memoryVerdict
	var mine []sample
	for _, s := range r.samples {
		if s.daemon == name {
			mine = append(mine, s)
		}
	}
	if len(mine) == 0 {
		return v
	}
	v.start, v.end, v.rssEnd = mine[0].heapInuse, mine[len(mine)-1].heapInuse, mine[len(mine)-1].rss
	w := r.window
	end := mine[len(mine)-1].t
	mean := func(from, to time.Duration, f func(sample) float64) float64 {
		sum, n := 0.0, 0
		for _, s := range mine {
			if s.t >= from && s.t <= to {
				sum, n = sum+f(s), n+1
			}
		}
		if n == 0 {
			return math.NaN()
		}
		return sum / float64(n)
	}
	heap := func(s sample) float64 { return s.heapInuse }
	rss := func(s sample) float64 { return s.rss }
	for _, s := range mine {
		if s.t <= w {
			v.atWindow = s.heapInuse
		} else {
			v.peakAfter = math.Max(v.peakAfter, s.heapInuse)
			v.rssMax = math.Max(v.rssMax, s.rss)
		}
	}
	if end < w+2*time.Minute {
		return v
	}
	v.measured = true
	v.growth = mean(end-time.Minute, end, heap)/mean(w, w+time.Minute, heap) - 1
	v.rssGrowth = mean(end-time.Minute, end, rss)/mean(w, w+time.Minute, rss) - 1
	v.slopePerMin = slope(mine, w, heap)
	v.rssSlope = slope(mine, w, rss)
	return v
}

// slope is the least-squares slope of f over the samples after from, per
// minute.
func slope(ss []sample, from time.Duration, f func(sample) float64) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, s := range ss {
		if s.t < from {
			continue
		}
		x, y := s.t.Minutes(), f(s)
		n, sx, sy, sxx, sxy = n+1, sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	if d := n*sxx - sx*sx; n >= 2 && d != 0 {
		return (n*sxy - sx*sy) / d
	}
	return 0
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

// write writes the CSV, the plots and the report, prints the report, and
// says whether every goal it could measure is met.
func (r *report) write() (bool, error) {
	img := filepath.Join(r.cfg.out, "img")
	if err := os.MkdirAll(img, 0o755); err != nil {
		return false, err
	}
	var csv strings.Builder
	csv.WriteString("seconds,daemon,rss_bytes,heap_alloc_bytes,heap_inuse_bytes,goroutines,cpu_seconds,decisions,replay_nonces\n")
	for _, s := range r.samples {
		fmt.Fprintf(&csv, "%.1f,%s,%.0f,%.0f,%.0f,%.0f,%.2f,%.0f,%.0f\n", s.t.Seconds(), s.daemon, s.rss, s.heapAlloc, s.heapInuse, s.goroutines, s.cpu, s.decisions, s.nonces)
	}
	if err := os.WriteFile(filepath.Join(img, "soak-samples.csv"), []byte(csv.String()), 0o644); err != nil {
		return false, err
	}
	if err := os.WriteFile(filepath.Join(img, "soak-bench.json"), r.benchJSON, 0o644); err != nil {
		return false, err
	}
	var mem []chart.Series
	for _, name := range []string{"alice", "bob"} {
		rss, heap := chart.Series{Name: name + " RSS"}, chart.Series{Name: name + " heap in use"}
		for _, s := range r.samples {
			if s.daemon == name {
				rss.X, rss.Y = append(rss.X, s.t.Minutes()), append(rss.Y, s.rss/(1<<20))
				heap.X, heap.Y = append(heap.X, s.t.Minutes()), append(heap.Y, s.heapInuse/(1<<20))
			}
		}
		mem = append(mem, rss, heap)
	}
	if err := chart.LineChart(filepath.Join(img, "soak-memory.png"),
		fmt.Sprintf("Daemon memory under full load (replay window %s)", r.window), "minutes", "MiB", mem); err != nil {
		return false, err
	}
	tput := chart.Series{Name: "calls passed /s"}
	errs := chart.Series{Name: "errors /s"}
	for _, b := range r.buckets(10) {
		tput.X, tput.Y = append(tput.X, float64(b.to)/60), append(tput.Y, b.okS)
		errs.X, errs.Y = append(errs.X, float64(b.to)/60), append(errs.Y, b.errorS)
	}
	if err := chart.LineChart(filepath.Join(img, "soak-throughput.png"), "Calls a second, per 10 s (alice calls bob through the local API)", "minutes", "calls/s",
		[]chart.Series{tput, errs}); err != nil {
		return false, err
	}

	var w strings.Builder
	met := r.markdown(&w)
	if err := os.WriteFile(filepath.Join(r.cfg.out, "soak-report.md"), []byte(w.String()), 0o644); err != nil {
		return false, err
	}
	fmt.Print(w.String())
	return met, nil
}

func (r *report) markdown(w io.Writer) (met bool) {
	met = true
	b := r.bench
	commit := r.cfg.commit
	if commit == "" {
		commit = gitOut("rev-parse", "--short", "HEAD")
		if gitOut("status", "--porcelain", "--untracked-files=no") != "" {
			commit += " (with uncommitted changes)"
		}
	}
	fmt.Fprintf(w, "# Soak: two daemons under full load for %s\n\n", r.cfg.duration)
	fmt.Fprintf(w, "Written by `make soak` (`go run ./simulations/soak -duration %s`) on %s, commit %s, %s, %d CPUs (GOMAXPROCS %d).\n\n",
		r.cfg.duration, r.started.UTC().Format("2006-01-02 15:04 UTC"), commit, runtime.Version(), runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "Two `meshagent run` daemons on 127.0.0.1 (TCP + TLS 1.3), each its own process with the default config "+
		"(replay window %s); alice calls `%s` on bob through her local API with\n\n    %s\n\n", r.window, r.cfg.action, r.benchCmd)
	fmt.Fprintf(w, "and the memory of each daemon is read from its `/metrics` every %s.\n\n", r.cfg.every)

	span, spanName := 60, "minute"
	if r.cfg.duration < 2*time.Minute {
		span, spanName = 10, "10 s"
	}
	bs := r.buckets(span)
	var inDaemons float64
	for _, m := range r.refused {
		for _, n := range m {
			inDaemons += n
		}
	}
	fmt.Fprintf(w, "## Goals\n\n| goal | measured | met |\n|---|---|---|\n")
	noRefusal := b.Errors == 0 && inDaemons == 0
	fmt.Fprintf(w, "| zero refusals | %d failed calls at the caller, %.0f rejections in the daemons' metrics | %s |\n", b.Errors, inDaemons, yesNo(noRefusal))
	met = met && noRefusal
	if len(bs) >= 2 {
		// The goal is that throughput does not sag: a last span faster
		// than the first (which holds the start-up) meets it.
		first, last := bs[0].okS, bs[len(bs)-1].okS
		ratio := last / first
		ok := ratio >= 0.90
		fmt.Fprintf(w, "| the last %s's throughput at least 90 %% of the first's | %.0f → %.0f calls/s (%.2f ×; other processes on the machine kept %s then %s cores busy) | %s |\n",
			spanName, first, last, ratio, fmtCores(r.othersCPU(sec(bs[0].from), sec(bs[0].to))),
			fmtCores(r.othersCPU(sec(bs[len(bs)-1].from), sec(bs[len(bs)-1].to))), yesNo(ok))
		met = met && ok
	}
	for _, name := range []string{"alice", "bob"} {
		v := r.memory(name)
		if !v.measured {
			fmt.Fprintf(w, "| %s's memory flat after the first window | run shorter than the window + 2 minutes: not measured | – |\n", name)
			continue
		}
		ok := v.growth <= 0.10 && v.rssGrowth <= 0.10
		// What the replay guard holds follows the calls of the last
		// window: if they grew, so may the memory.
		held := r.windowCalls(r.cfg.duration-30*time.Second)/r.windowCalls(r.window+30*time.Second) - 1
		fmt.Fprintf(w, "| %s's memory flat after the first window (≤ 10 %% growth, minute after the window → last minute) | heap in use %+.1f %% (%+.2f MiB/min), RSS %+.1f %% (%+.2f MiB/min); calls in the preceding window %+.1f %% | %s |\n",
			name, 100*v.growth, v.slopePerMin/(1<<20), 100*v.rssGrowth, v.rssSlope/(1<<20), 100*held, yesNo(ok))
		met = met && ok
	}

	fmt.Fprintf(w, "\n## Calls\n\n%d calls in %.0f s: %.0f calls/s, %d passed, %d failed.", b.Calls, b.Seconds, b.CallsPerS, b.OK, b.Errors)
	if l := b.Latency; l != nil {
		fmt.Fprintf(w, " Latency of the calls that passed: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.1f ms.", l.P50, l.P90, l.P99, l.P999, l.Max)
	}
	fmt.Fprintf(w, "\n\nThe machine has %d cores, shared: the last column is what other processes kept busy meanwhile.\n\n", runtime.NumCPU())
	fmt.Fprintf(w, "| %s | passed calls/s | errors/s | other processes (cores) |\n|---|---|---|---|\n", spanName)
	for _, k := range bs {
		fmt.Fprintf(w, "| %s–%s | %.0f | %.1f | %s |\n", clock(k.from), clock(k.to), k.okS, k.errorS, fmtCores(r.othersCPU(sec(k.from), sec(k.to))))
	}
	fmt.Fprintf(w, "\n![calls a second](img/soak-throughput.png)\n\n## Refusals\n\n")
	fmt.Fprintf(w, "| where | code | count |\n|---|---|---|\n")
	rows := 0
	for _, c := range sortedKeys(b.ErrorsByCode) {
		fmt.Fprintf(w, "| bench (alice's local API) | `%s` | %d |\n", c, b.ErrorsByCode[c])
		rows++
	}
	for _, name := range []string{"alice", "bob"} {
		for _, c := range sortedKeys(r.refused[name]) {
			fmt.Fprintf(w, "| %s's daemon (rejected decisions) | `%s` | %.0f |\n", name, c, r.refused[name][c])
			rows++
		}
	}
	if rows == 0 {
		fmt.Fprintf(w, "| anywhere | – | 0 |\n")
	}
	fmt.Fprintf(w, "\n## Memory\n\nHeap in use and RSS of each daemon; the replay window (%s) ends at minute %.0f. Samples: [img/soak-samples.csv](img/soak-samples.csv); bench's summary with its per-second timeline: [img/soak-bench.json](img/soak-bench.json).\n\n",
		r.window, r.window.Minutes())
	fmt.Fprintf(w, "| daemon | heap at start | heap at the window's end | peak heap after | heap at the end | peak RSS after the window | RSS at the end | replay nonces at the window's end / at the end / peak | CPU |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, name := range []string{"alice", "bob"} {
		v := r.memory(name)
		peak, rssPeak := "–", "–"
		if v.peakAfter > 0 {
			peak, rssPeak = mib(v.peakAfter), mib(v.rssMax)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, mib(v.start), mib(v.atWindow), peak, mib(v.end), rssPeak, mib(v.rssEnd), r.nonces(name), r.cpu(name))
	}
	fmt.Fprintf(w, "\n![daemon memory](img/soak-memory.png)\n")
	return met
}

// nonces says how many nonces name's replay guard held at the window's
// end, at the end, and at most.
func (r *report) nonces(name string) string {
	var atWindow, end, peak float64
	for _, s := range r.samples {
		if s.daemon != name {
			continue
		}
		if s.t <= r.window {
			atWindow = s.nonces
		}
		end, peak = s.nonces, max(peak, s.nonces)
	}
	return fmt.Sprintf("%.0f / %.0f / %.0f", atWindow, end, peak)
}

// windowCalls is the calls answered in the replay window before at: about
// the nonces each daemon's replay guard holds then.
func (r *report) windowCalls(at time.Duration) float64 {
	n := 0.0
	for _, row := range r.bench.Timeline {
		if t := sec(row.Second); t > at-r.window && t <= at {
			n += float64(row.Calls)
		}
	}
	return n
}

// cpuAt is the CPU time name had used by its sample nearest to at, and
// that sample's time.
func (r *report) cpuAt(name string, at time.Duration) (cpu float64, t time.Duration, ok bool) {
	best := time.Duration(math.MaxInt64)
	for _, s := range r.samples {
		if d := (s.t - at).Abs(); s.daemon == name && d < best {
			best, cpu, t, ok = d, s.cpu, s.t, true
		}
	}
	return cpu, t, ok && best < 6*time.Second
}

// othersCPU is how many cores the processes other than the two daemons
// and bench kept busy from one time to another, or NaN if not sampled.
func (r *report) othersCPU(from, to time.Duration) float64 {
	cores := func(name string) float64 {
		c0, t0, ok0 := r.cpuAt(name, from)
		c1, t1, ok1 := r.cpuAt(name, to)
		if !ok0 || !ok1 || t1 <= t0 {
			return math.NaN()
		}
		return (c1 - c0) / (t1 - t0).Seconds()
	}
	return cores("host") - cores("alice") - cores("bob") - cores("bench")
}

func fmtCores(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.2f", max(v, 0))
}

// cpu is the share of one core a daemon used over the samples.
func (r *report) cpu(name string) string {
	var first, last *sample
	for i := range r.samples {
		if s := &r.samples[i]; s.daemon == name {
			if first == nil {
				first = s
			}
			last = s
		}
	}
	if first == nil || last.t <= first.t {
		return "–"
	}
	return fmt.Sprintf("%.0f %% of a core", 100*(last.cpu-first.cpu)/(last.t-first.t).Seconds())
}

func sec(s int) time.Duration { return time.Duration(s) * time.Second }

func clock(s int) string { return fmt.Sprintf("%d:%02d", s/60, s%60) }

func sortedKeys[V int64 | float64](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func gitOut(args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
