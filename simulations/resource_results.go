//go:build meshsim

package simulations

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meshagent/meshagent/node"
)

// Usage is what the process holding the target holds at one moment. The
// honest agents and their callers run in the same process as the target,
// so heap, goroutines and descriptors are the process's, not the target
// node's alone; connections and streams are the target's.
type Usage struct {
	HeapBytes  uint64 // live heap after a GC
	Goroutines int
	FDs        int // open file descriptors (/proc/self/fd)
	Conns      int // the target's open connections
	Streams    int // the target's open streams, over all its connections
}

// AuditBytes is what the target's audit log got during some windows.
type AuditBytes struct {
	All, Reject int64 // all lines; lines with decision reject
	For         time.Duration
}

// PerSecond returns all bytes and reject-line bytes per second.
func (a AuditBytes) PerSecond() (all, reject float64) {
	s := a.For.Seconds()
	return float64(a.All) / s, float64(a.Reject) / s
}

// CPU is the processor time of this process (the target, the honest
// agents and their callers) and of the attacker's during some windows.
type CPU struct {
	Self, Attacker, For time.Duration
}

// Cores returns this process's and the attacker's CPU time per second.
func (c CPU) Cores() (self, attacker float64) {
	return c.Self.Seconds() / c.For.Seconds(), c.Attacker.Seconds() / c.For.Seconds()
}

// ResourceResult is one resource attack measured at the target.
type ResourceResult struct {
	AttackResult
	Landed int64 // attempts that got past the attacker's own dial, open or write
	// UsageWithout and UsageUnder are sampled at the end of each window
	// without and under the attack.
	UsageWithout, UsageUnder []Usage
	AuditWithout, AuditUnder AuditBytes
	CPUWithout, CPUUnder     CPU
	// PairRatios are the honest rate of each window under the attack
	// over that of the window without it that follows.
	PairRatios []float64
	// Refusals are the target's audited refusals of anyone but the honest
	// agents while the attack ran (the hook sees every one, also those the
	// audit log leaves out), by kind and reason.
	Refusals map[string]int
	// Gated and Throttled are the target's own counts over the attack:
	// connections and streams its gate refused, and requests it refused
	// unchecked.
	Gated, Throttled int64
	// HarnessRecords are the rejections the Mesh kept in memory over the
	// attack (every node's, in the same heap; about 0.5 KB each).
	HarnessRecords int
}

// Delta returns f's mean under the attack less its mean without, and its
// largest value under the attack less the mean without.
func (r ResourceResult) Delta(f func(Usage) float64) (mean, peak float64) {
	avg := func(us []Usage) float64 {
		t := 0.0
		for _, u := range us {
			t += f(u)
		}
		return t / float64(max(len(us), 1))
	}
	base := avg(r.UsageWithout)
	peak = base
	for i, u := range r.UsageUnder {
		if v := f(u); i == 0 || v > peak {
			peak = v
		}
	}
	return avg(r.UsageUnder) - base, peak - base
}

// P99 returns the 99th percentile of honest latencies without and under
// the attack.
func (r ResourceResult) P99() (without, under time.Duration) {
	return Percentile(r.Baseline.Latencies, 0.99), Percentile(r.Under.Latencies, 0.99)
}

// SeparateResourceAttacks is SeparateAttacks for ResourceAttacks (or any
// of them), in rounds windows without and under each attack (d in all for
// either; SeparateAttacks has 4), with the target measured around every
// window: the process's
// heap, goroutines and descriptors and the target's connections and
// streams at each window's end, its audit log's bytes during the windows,
// what it refused and gated. The target writes its audit log to a
// counter, the one difference from SeparateAttacks's stage.
func SeparateResourceAttacks(ctx context.Context, n int, d time.Duration, rounds int, attacks []Attack) ([]ResourceResult, error) {
	audit := &auditCounter{}
	st, err := newAttackStage(ctx, n, func(m *Mesh) error {
		// The stage's target is its first agent: start it again, before
		// anything is wired to it, with the counter as its audit log.
		name := m.Names()[0]
		old := m.Agents[name]
		if err := old.Node.Close(); err != nil {
			return err
		}
		cfg := old.cfg
		cfg.Audit = audit
		_, err := m.start(ctx, name, old.Identity, old.Credential, cfg, old.hostOpts)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer st.m.Close()
	rs, gs, err := st.separateAll(ctx, d, rounds, attacks, audit)
	out := make([]ResourceResult, len(rs))
	for i, r := range rs {
		g := gs[i]
		out[i] = ResourceResult{AttackResult: r, Landed: g.landed, UsageWithout: g.without, UsageUnder: g.under,
			AuditWithout: g.auditWithout, AuditUnder: g.auditUnder, CPUWithout: g.cpuWithout, CPUUnder: g.cpuUnder, PairRatios: g.pairs, Refusals: g.refusals,
			Gated: g.gated, Throttled: g.throttled, HarnessRecords: g.records}
	}
	return out, err
}

// auditCounter is an audit log that counts its bytes. The node writes one
// line per Write.
type auditCounter struct {
	all, reject atomic.Int64
}

var rejectLine = []byte(`"decision":"reject"`)

func (c *auditCounter) Write(p []byte) (int, error) {
	c.all.Add(int64(len(p)))
	if bytes.Contains(p, rejectLine) {
		c.reject.Add(int64(len(p)))
	}
	return len(p), nil
}

// gauge measures the target over one attack. Its methods do nothing on a
// nil gauge (SeparateAttacks has none).
type gauge struct {
	st     *attackStage
	audit  *auditCounter
	target *node.Node
	honest map[string]bool

	pid                int // the attacker's
	gated0, throttled0 int64
	records0           int
	begun              time.Time
	all0, reject0      int64
	self0, attacker0   time.Duration

	without, under           []Usage
	auditWithout, auditUnder AuditBytes
	cpuWithout, cpuUnder     CPU
	underRate                float64 // of the last window under the attack
	pairs                    []float64
	refusals                 map[string]int
	gated, throttled         int64
	records                  int
	landed                   int64
}

func newGauge(st *attackStage, audit *auditCounter) *gauge {
	g := &gauge{st: st, audit: audit, target: st.m.Agents[st.target].Node, honest: map[string]bool{}}
	for _, a := range st.m.Agents {
		g.honest[a.ID().String()] = true
	}
	return g
}

// start is called when the attack is first switched on, pid the
// attacker's process.
func (g *gauge) start(pid int) {
	if g == nil {
		return
	}
	g.pid = pid
	g.gated0, g.throttled0 = g.target.Stats().Gated, g.target.Stats().Throttled
	g.st.m.mu.Lock()
	g.records0 = len(g.st.m.audit)
	g.st.m.mu.Unlock()
}

// begin is called as a window starts.
func (g *gauge) begin() {
	if g == nil {
		return
	}
	g.begun, g.all0, g.reject0 = time.Now(), g.audit.all.Load(), g.audit.reject.Load()
	g.self0, g.attacker0 = procCPU("self"), procCPU(strconv.Itoa(g.pid))
}

// end is called as a window ends, under the attack or not, with the
// honest load it measured.
func (g *gauge) end(under bool, l LoadResult) {
	if g == nil {
		return
	}
	if under {
		g.underRate = l.PerSecond()
	} else {
		g.pairs = append(g.pairs, g.underRate/l.PerSecond())
	}
	took := time.Since(g.begun)
	self, attacker := procCPU("self")-g.self0, procCPU(strconv.Itoa(g.pid))-g.attacker0
	sum, cpu := &g.auditWithout, &g.cpuWithout
	if under {
		sum, cpu = &g.auditUnder, &g.cpuUnder
	}
	sum.All, sum.Reject, sum.For = sum.All+g.audit.all.Load()-g.all0, sum.Reject+g.audit.reject.Load()-g.reject0, sum.For+took
	cpu.Self, cpu.Attacker, cpu.For = cpu.Self+self, cpu.Attacker+attacker, cpu.For+took
	u := g.sample()
	if under {
		g.under = append(g.under, u)
	} else {
		g.without = append(g.without, u)
	}
}

func (g *gauge) sample() Usage {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	u := Usage{HeapBytes: ms.HeapAlloc, Goroutines: runtime.NumGoroutine()}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		u.FDs = len(fds)
	}
	for _, c := range g.target.Host().Network().Conns() {
		u.Conns++
		u.Streams += len(c.GetStreams())
	}
	return u
}

// finish is called once the attacker has ended.
func (g *gauge) finish(landed int64) {
	if g == nil {
		return
	}
	g.landed = landed
	g.gated, g.throttled = g.target.Stats().Gated-g.gated0, g.target.Stats().Throttled-g.throttled0
	tid := g.target.ID().String()
	g.refusals = map[string]int{}
	m := g.st.m
	m.mu.Lock()
	defer m.mu.Unlock()
	g.records = len(m.audit) - g.records0
	for _, a := range m.audit[g.records0:] {
		if a.Direction == "in" && a.Recipient == tid && a.Decision != "accept" && !g.honest[a.Sender] {
			g.refusals[string(a.Kind)+" "+a.Reason]++
		}
	}
}

// ResourceTable writes rs as two Markdown tables: honest throughput, and
// what the target held.
func ResourceTable(rs []ResourceResult) string {
	var b strings.Builder
	b.WriteString("| attack | honest calls/s without / under | ratio (goal ≥ 0.9) | window pairs: lowest, median, highest | p99 without / under | this process's cores without / under | µs of them per honest call | attacker's cores under | attempts (landed) | the target's answer |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		p0, p1 := r.P99()
		c0, _ := r.CPUWithout.Cores()
		c1, a1 := r.CPUUnder.Cores()
		fmt.Fprintf(&b, "| %s | %s / %s | %.2f | %.2f, %.2f, %.2f | %s / %s | %.2f / %.2f | %.0f / %.0f | %.2f | %s (%s) | %s |\n", r.Attack.Name,
			thousands(r.Baseline.PerSecond()), thousands(r.Under.PerSecond()), r.Ratio(), lowest(r.PairRatios), median(r.PairRatios), highest(r.PairRatios), msec(p0), msec(p1),
			c0, c1, perCall(r.CPUWithout.Self, r.Baseline), perCall(r.CPUUnder.Self, r.Under), a1,
			thousands(float64(r.Attempts)), thousands(float64(r.Landed)), r.answer())
	}
	b.WriteString("\n| attack | heap Δ MiB, mean (peak) | goroutines Δ | descriptors Δ | target connections Δ | target streams Δ | audit KiB/s without / under | of which reject lines |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		heap, heapPeak := r.Delta(func(u Usage) float64 { return float64(u.HeapBytes) / (1 << 20) })
		cell := func(f func(Usage) float64) string {
			mean, peak := r.Delta(f)
			return fmt.Sprintf("%+.0f (%+.0f)", mean, peak)
		}
		a0, r0 := r.AuditWithout.PerSecond()
		a1, r1 := r.AuditUnder.PerSecond()
		fmt.Fprintf(&b, "| %s | %+.1f (%+.1f) | %s | %s | %s | %s | %.0f / %.0f | %.1f / %.1f |\n", r.Attack.Name, heap, heapPeak,
			cell(func(u Usage) float64 { return float64(u.Goroutines) }), cell(func(u Usage) float64 { return float64(u.FDs) }),
			cell(func(u Usage) float64 { return float64(u.Conns) }), cell(func(u Usage) float64 { return float64(u.Streams) }),
			a0/1024, a1/1024, r0/1024, r1/1024)
	}
	return b.String()
}

// answer sums up what the target did about the attack: its refusals by
// kind and reason (the three commonest), and what it gated or throttled.
func (r ResourceResult) answer() string {
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range r.Refusals {
		all = append(all, kv{k, n})
	}
	slices.SortFunc(all, func(a, b kv) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.k, b.k)) })
	var parts []string
	for i, e := range all {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("%d more", len(all)-3))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %s", strings.TrimSpace(e.k), thousands(float64(e.n))))
	}
	if r.Gated > 0 {
		parts = append(parts, "gated "+thousands(float64(r.Gated)))
	}
	if r.Throttled > 0 {
		parts = append(parts, "throttled "+thousands(float64(r.Throttled)))
	}
	if len(parts) == 0 {
		return "nothing refused"
	}
	return strings.Join(parts, "; ")
}

// lowest returns the smallest of xs, 0 for none.
func lowest(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Min(xs)
}

// median returns the median of xs, 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return (s[(len(s)-1)/2] + s[len(s)/2]) / 2
}

// highest returns the largest of xs, 0 for none.
func highest(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}

// perCall returns the microseconds of cpu per call served in l.
func perCall(cpu time.Duration, l LoadResult) float64 {
	return float64(cpu.Microseconds()) / float64(max(l.Calls-l.Failures, 1))
}

// thousands formats v rounded, with a space between thousands.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + " " + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// procCPU returns the utime+stime of process pid ("self" for this one),
// all its threads; 0 when it cannot be read.
func procCPU(pid string) time.Duration {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces): state
	// is the first, utime the twelfth, stime the thirteenth.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTick = 10 * time.Millisecond // USER_HZ = 100 on Linux
	return time.Duration(ut+st) * clockTick
}

func msec(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
