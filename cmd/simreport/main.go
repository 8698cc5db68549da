//go:build meshsim

// Command simreport runs meshagent's large simulation scenarios on this
// machine and writes a Markdown report with PNG plots (make sim).
//
//	go run ./cmd/simreport -out docs
//
// Every figure in the report is measured in the run that wrote it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/gologshim"

	"github.com/meshagent/meshagent/simulations"
	"github.com/meshagent/meshagent/simulations/chart"
)

func main() {
	// libp2p's own loggers (pubsub's slow-heartbeat warnings on a loaded
	// machine) say errors only: the report is the output.
	gologshim.SetDefaultHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if ran, err := simulations.RunAttacker(); ran { // started by SeparateAttacks
		if err != nil {
			fmt.Fprintln(os.Stderr, "attacker:", err)
			os.Exit(1)
		}
		return
	}
	out := flag.String("out", "docs", "directory for simulation-report.md and img/")
	sizes := flag.String("sizes", "10,50,100", "registry scenario sizes (N)")
	flag.Parse()
	if err := run(*out, *sizes); err != nil {
		fmt.Fprintln(os.Stderr, "simreport:", err)
		os.Exit(1)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func run(out, sizeList string) error {
	ctx := context.Background()
	img := filepath.Join(out, "img")
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	started := time.Now()
	fmt.Fprintf(&md, "# Simulation report\n\nWritten by `make sim` (`go run ./cmd/simreport -out docs`) on %s, %d CPUs, %s. ",
		started.UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version())
	md.WriteString("Every node is a real meshagent node (libp2p host, TLS 1.3 over TCP on 127.0.0.1) in one process; ")
	md.WriteString("heartbeats are scaled down and times are also given in heartbeat intervals. Re-run the command to reproduce; absolute times vary with the machine.\n\n")

	// Registry at N.
	var regs []simulations.RegistryResult
	for _, s := range strings.Split(sizeList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "registry N=%d...\n", n)
		r, err := simulations.RegistryScenario(ctx, n, time.Duration(n)*10*time.Millisecond, 0.05, 7)
		if err != nil {
			return fmt.Errorf("registry N=%d: %w", n, err)
		}
		regs = append(regs, r)
	}
	md.WriteString("## Registry, liveness and revocation against N\n\n")
	md.WriteString("Topology: a ring plus one random chord per node (seed 7), dialled 16 at a time. Heartbeat N × 10 ms, dead after 3 heartbeats. ")
	md.WriteString("5 % of pubsub messages and heartbeats dropped at random on every link during a 10-heartbeat window and while a tenth of the nodes crash at once. Liveness bytes are what a node receives on the beat overlay and on pubsub.\n\n")
	md.WriteString("| N | heartbeat | wiring (admission) | converged after wiring | liveness bytes / node / heartbeat | projected kbit/s per node at 30 s | false dead verdicts | killed | detection p50 / p99 (heartbeats) | first-to-last spread | revocation at every node |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var xs, conv, det50, det99, kbit []float64
	for _, r := range regs {
		fmt.Fprintf(&md, "| %d | %s | %s | %s | %.0f | %.1f | %d | %d | %.2f / %.2f | %s | %s |\n", r.N, r.Heartbeat, ms(r.Connect), ms(r.Converge),
			r.BytesPerNodePerHB, r.KbitPerNodeAt30s(), r.FalseDead, r.Killed,
			simulations.Percentile(r.DetectHB, 0.5), simulations.Percentile(r.DetectHB, 0.99), ms(r.DetectSpread), ms(r.Revocation))
		xs = append(xs, float64(r.N))
		conv = append(conv, (r.Connect+r.Converge).Seconds()/r.Heartbeat.Seconds())
		det50 = append(det50, simulations.Percentile(r.DetectHB, 0.5))
		det99 = append(det99, simulations.Percentile(r.DetectHB, 0.99))
		kbit = append(kbit, r.KbitPerNodeAt30s())
	}
	for _, r := range regs {
		if len(r.FalseDeadPairs) > 0 {
			fmt.Fprintf(&md, "\nFalse dead verdicts at N = %d: %s.\n", r.N, strings.Join(r.FalseDeadPairs, "; "))
		}
	}
	if err := chart.LineChart(filepath.Join(img, "detection-vs-n.png"), "Crash detection (heartbeat intervals)", "N", "heartbeats",
		[]chart.Series{{Name: "p50", X: xs, Y: det50}, {Name: "p99", X: xs, Y: det99}, {Name: "timeout+1 hb", X: xs, Y: repeat(4, len(xs))}}); err != nil {
		return err
	}
	if err := chart.LineChart(filepath.Join(img, "convergence-vs-n.png"), "Cold start: wiring + convergence (heartbeat intervals)", "N", "heartbeats",
		[]chart.Series{{Name: "cold start", X: xs, Y: conv}, {Name: "goal: 3", X: xs, Y: repeat(3, len(xs))}}); err != nil {
		return err
	}
	if err := chart.LineChart(filepath.Join(img, "traffic-vs-n.png"), "Liveness traffic per node at a 30 s heartbeat (kbit/s)", "N", "kbit/s",
		[]chart.Series{{Name: "measured", X: xs, Y: kbit}}); err != nil {
		return err
	}
	md.WriteString("\n![detection](img/detection-vs-n.png)\n\n![convergence](img/convergence-vs-n.png)\n\n![traffic](img/traffic-vs-n.png)\n\n")

	// Attack throughput.
	fmt.Fprintln(os.Stderr, "attacks from separate processes...")
	const attackFor = 2 * time.Second
	rs, err := simulations.SeparateAttacks(ctx, 20, attackFor, simulations.Attacks)
	if err != nil {
		return fmt.Errorf("attacks: %w", err)
	}
	fmt.Fprintf(&md, "## Honest traffic during each attack\n\n20 honest agents. For each row of the threat model, a fresh attacker (enrolled, except the outsider) runs in a process of its own under the idle CPU scheduling class (`chrt --idle`: it gets only the CPU time the honest agents leave, as an attacker on another machine would), and repeats the attack from 4 goroutines; its frames are built once and re-sent, so it spends its CPU on sending. Four honest callers call the target back to back; windows of %s without the attack and %s under it alternate four times each, %s in all for each (`simulations.SeparateAttacks`). A call still in flight at the end of a window is not counted.\n\n", attackFor/4, attackFor/4, attackFor)
	md.WriteString("| attack | what the attacker sends | honest calls/s without | under | ratio | p99 without / under | attempts | rejections (with the code) | the target | handler runs |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var mixed simulations.AttackResult
	low, met := math.Inf(1), 0
	for _, r := range rs {
		a := r.Attack
		code := "`" + string(a.Code) + "`"
		if a.Code == "" {
			code, mixed = "any", r
		}
		low = math.Min(low, r.Ratio())
		if r.Ratio() >= 0.9 {
			met++
		}
		did := "refused at admission, then by the gater"
		switch {
		case r.CutOff:
			did = "cut it off"
		case r.Throttled:
			did = "throttled it"
		}
		fmt.Fprintf(&md, "| %s | %s | %.0f | %.0f | %.2f | %s / %s | %d | %d (%d %s) | %s | **%d** |\n", a.Name, a.What,
			r.Baseline.PerSecond(), r.Under.PerSecond(), r.Ratio(), ms(simulations.Percentile(r.Baseline.Latencies, 0.99)), ms(simulations.Percentile(r.Under.Latencies, 0.99)),
			r.Attempts, r.Rejected, r.WithCode, code, did, r.HandlerRuns)
	}
	fmt.Fprintf(&md, "\nHonest throughput at least 0.9 × the run without the attack (the goal) in **%d of %d** attacks; lowest %.2f ×. Every rejection spends the sender's budget (100 at once, 20 a second). When a hostile rejection spends it (forgery, tampering, impersonation, replay, escalation, a stolen or foreign token, garbage), the target cuts the attacker off: disconnects it and refuses it for a minute. When one an honest agent can cause by mistake spends it (expired, not yet valid, revoked, stale), the target throttles the attacker: its requests are refused unchecked, and audited once a second, until the budget refills. The outsider is refused at admission, then by the connection gater. Rejections counted include those audits.\n\n", met, len(rs), low)

	fmt.Fprintln(os.Stderr, "attack in the same process...")
	a, err := simulations.AttackScenario(ctx, 20, 3*time.Second)
	if err != nil {
		return fmt.Errorf("attack: %w", err)
	}
	fmt.Fprintf(&md, "The mixed attack from inside the honest agents' process (`simulations.AttackScenario`, 3 s windows): %.0f honest calls/s without it, %.0f under it: %.2f ×. The attacker sent %d requests; the target audited %d rejections of it; handler runs caused by the attacker: **%d**. Here the attacker's retry loops, after it was cut off, share the two cores with the honest callers: the ratio measures that share, which an attacker on another machine does not take.\n\n",
		a.Baseline.PerSecond(), a.Under.PerSecond(), a.Ratio(), a.Attempts, a.Rejected, a.HandlerRuns)
	if err := chart.Histogram(filepath.Join(img, "latency-attack.png"), "Honest call latency (ms) during the mixed attack, up to the 99th percentile", "ms",
		[]chart.Series{{Name: "without attack", Y: millis(mixed.Baseline.Latencies)}, {Name: "under attack", Y: millis(mixed.Under.Latencies)}}, 30); err != nil {
		return err
	}
	md.WriteString("![latency](img/latency-attack.png)\n\n")

	// Rotation.
	fmt.Fprintln(os.Stderr, "rotation...")
	rot, err := simulations.RotationScenario(ctx, 20, 4*time.Second, 10*time.Second)
	if err != nil {
		return fmt.Errorf("rotation: %w", err)
	}
	fmt.Fprintf(&md, "## Credential rotation under load\n\n%d agents and one issuer; credentials live %s and are renewed at half-life; 5 callers call one target for 10 s.\n\n| calls | failed | credentials renewed |\n|---|---|---|\n| %d | **%d** | %d of %d |\n\n",
		rot.N, rot.TTL, rot.Load.Calls, rot.Load.Failures, rot.Renewals, rot.N)

	// Partition.
	fmt.Fprintln(os.Stderr, "partition...")
	p, err := simulations.PartitionScenario(ctx, 20, 200*time.Millisecond)
	if err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	fmt.Fprintf(&md, "## Partition and heal\n\n%d agents split in two halves; heartbeat %s, dead after 3.\n\n| each side declares the other dead | after healing, every node sees every other alive |\n|---|---|\n| %s (%.1f heartbeats) | %s (%.1f heartbeats) |\n\n",
		p.N, p.Heartbeat, ms(p.Split), p.Split.Seconds()/p.Heartbeat.Seconds(), ms(p.Heal), p.Heal.Seconds()/p.Heartbeat.Seconds())

	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	fmt.Fprintf(&md, "Run time %s; peak Go heap in use %.0f MiB.\n", time.Since(started).Round(time.Second), float64(mem.HeapSys)/(1<<20))
	md.WriteString(virtualNote)
	return os.WriteFile(filepath.Join(out, "simulation-report.md"), []byte(md.String()), 0o644)
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func millis(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, x := range d {
		out[i] = float64(x.Microseconds()) / 1000
	}
	return out
}

const virtualNote = `
## Reproducing and the virtual-time scenario

` + "`make sim`" + ` writes this file (` + "`go run ./cmd/simreport -out docs`" + `), then
runs the 100-node scenario in virtual time
(` + "`MESHAGENT_VIRTUAL_N=100 go test -run TestVirtualTimeScenario -v ./simulations`" + `:
simnet QUIC + TLS inside ` + "`testing/synctest`" + `, 30 s heartbeats and 25 ms links;
steady liveness traffic, a registration, a leave and a revocation with and
without 10 % loss, a tenth of the nodes frozen for 10 s, a partition healed,
and a tenth of the nodes crashing at once under 5 % loss), whose figures it
prints; those for N = 30, 100, 200 and 500 are in BENCHMARKS.md (` + "`make sim500`" + `
runs the 500-node release scenario in about 9 minutes). Real-TCP figures at N = 100
vary from run to run by a heartbeat or more: 100 nodes compete for two cores.
`
