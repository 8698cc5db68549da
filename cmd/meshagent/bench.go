package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshagent/meshagent/trust"
)

// benchConfig is what one `meshagent bench` run does.
type benchConfig struct {
	Home   string // the calling agent's home: its daemon's local API
	To     string // the peer called
	Action string // the scope called
	// Concurrency is the number of workers: each has one call in flight at
	// a time.
	Concurrency int
	Duration    time.Duration // how long calls are started
	// Rate, when above 0, starts Rate calls a second on a fixed schedule
	// whatever the answers (open loop), and each call's latency runs from
	// its scheduled start. At 0 each worker starts its next call when the
	// last one is answered (closed loop), as fast as the daemon answers.
	Rate    float64
	Body    json.RawMessage // the body of every call
	Timeout time.Duration   // how long the daemon waits for each reply
	// RetryBusy retries a call refused as busy after the Retry-After it
	// was given, until it passes or its timeout ends. By default a busy
	// refusal is counted and not retried; in the closed loop its worker
	// waits the Retry-After before its next call.
	RetryBusy bool
	Progress  io.Writer // one line a second; nil for none
}

// benchSummary is the outcome of a run, as `--json` writes it.
type benchSummary struct {
	To          string  `json:"to"`
	Action      string  `json:"action"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"` // calls/s scheduled; 0: closed loop
	BodyBytes   int     `json:"body_bytes"`
	Seconds     float64 `json:"seconds"` // from the first call to the last answer
	Calls       int64   `json:"calls"`   // answered (ok + errors)
	OK          int64   `json:"ok"`
	Errors      int64   `json:"errors"`
	// ErrorsByCode counts failed calls by the reason code the local API
	// answered ("busy", "replay_full", ...), or "http_STATUS" for an answer
	// without a code, "local_api" when the daemon could not be reached,
	// "timeout" when it did not answer within the call's timeout.
	ErrorsByCode map[string]int64 `json:"errors_by_code"`
	// BusyRetries counts retries of busy refusals (with RetryBusy), which
	// are not calls of their own.
	BusyRetries int64 `json:"busy_retries,omitempty"`
	// Missed counts scheduled calls (open loop) not started because every
	// worker was still waiting: the generator, not the mesh, fell behind.
	Missed    int64   `json:"missed,omitempty"`
	CallsPerS float64 `json:"calls_per_s"`
	OKPerS    float64 `json:"ok_per_s"`
	// Latency of the calls that passed, in milliseconds.
	Latency   *latencySummary `json:"latency_ms,omitempty"`
	Histogram []histogramRow  `json:"histogram,omitempty"`
	// Timeline holds the calls answered in each second of the run.
	Timeline []timelineRow `json:"timeline"`
}

type latencySummary struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

type histogramRow struct {
	FromMs float64 `json:"from_ms"`
	ToMs   float64 `json:"to_ms"`
	Count  uint64  `json:"count"`
}

type timelineRow struct {
	Second int   `json:"second"` // the second that ends at this offset from the start
	Calls  int64 `json:"calls"`
	Errors int64 `json:"errors"`
}

func newBenchCmd() *cobra.Command {
	var cfg benchConfig
	var body string
	var size int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bench --home DIR --to PEERID --action SCOPE [--concurrency N] [--duration D] [--rate R] [--body JSON|--size N]",
		Short: "Load a peer with calls through the daemon and report calls/s, latency and errors by code",
		Long: `Bench calls ACTION on PEERID through the daemon at --home (the route of
'meshagent send') from --concurrency workers for --duration. At --rate 0
(the default) each worker starts its next call when the last is answered
(closed loop); at --rate R calls start R times a second whatever the answers
(open loop), and latency runs from each call's scheduled start. A line on
stderr each second shows the progress; at the end it prints calls/s, the
latency percentiles and histogram of the calls that passed, and every error
by its reason code (--json: the same as JSON on stdout). A busy refusal is
counted, not retried (--retry-busy retries it after its Retry-After). Ctrl-C
ends the run early with its summary.`,
		Args: exactArgs(0),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if err := benchFlags(cmd, &cfg, body, size); err != nil {
				return err
			}
			cfg.Progress = cmd.ErrOrStderr()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := runBench(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			s.print(cmd.OutOrStdout())
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Home, "home", "", "the calling agent's home directory (its daemon must run)")
	f.StringVar(&cfg.To, "to", "", "peer ID to call")
	f.StringVar(&cfg.Action, "action", "", "action (scope) to call")
	f.IntVarP(&cfg.Concurrency, "concurrency", "c", 4, "workers, each with one call in flight")
	f.DurationVarP(&cfg.Duration, "duration", "d", 10*time.Second, "how long to start calls")
	f.Float64VarP(&cfg.Rate, "rate", "r", 0, "calls started per second, whatever the answers (0: each worker calls as fast as it is answered)")
	f.StringVar(&body, "body", "", "JSON body of every call (default {})")
	f.IntVar(&size, "size", 0, "a body of N bytes instead (a JSON string)")
	f.DurationVar(&cfg.Timeout, "timeout", defaultCallTimeout, "how long to wait for each reply")
	f.BoolVar(&cfg.RetryBusy, "retry-busy", false, "retry a busy refusal after its Retry-After")
	f.BoolVar(&asJSON, "json", false, "write the summary as JSON to stdout")
	required(cmd, "home", "to", "action")
	return cmd
}

// maxBenchBody leaves room in the local API's 1 MiB request for the rest of
// the request.
const maxBenchBody = 1<<20 - 4096

// benchFlags checks the flags that need no daemon and sets cfg.Body.
func benchFlags(cmd *cobra.Command, cfg *benchConfig, body string, size int) error {
	f := cmd.Flags()
	switch {
	case cfg.Concurrency < 1:
		return usagef("--concurrency must be at least 1, got %d", cfg.Concurrency)
	case cfg.Duration <= 0:
		return usagef("--duration must be above 0, got %s", cfg.Duration)
	case cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0):
		return usagef("--rate must be 0 (as fast as answered) or a number of calls a second, got %v", cfg.Rate)
	case cfg.Timeout <= 0:
		return usagef("--timeout must be above 0, got %s", cfg.Timeout)
	case f.Changed("body") && f.Changed("size"):
		return usagef("--body and --size exclude each other")
	}
	if _, err := trust.ParsePublicKey(cfg.To); err != nil {
		return usagef("--to: %v", err)
	}
	if err := trust.ValidateScope(cfg.Action); err != nil {
		return usagef("--action: %v", err)
	}
	switch {
	case f.Changed("size"):
		if size < 2 || size > maxBenchBody {
			return usagef("--size must be 2 to %d bytes, got %d", maxBenchBody, size)
		}
		cfg.Body = json.RawMessage(`"` + strings.Repeat("x", size-2) + `"`)
	case body != "":
		if !json.Valid([]byte(body)) {
			return usagef("--body is not valid JSON")
		}
		if len(body) > maxBenchBody {
			return usagef("--body is over %d bytes", maxBenchBody)
		}
		cfg.Body = json.RawMessage(body)
	default:
		cfg.Body = json.RawMessage(`{}`)
	}
	return nil
}

// benchPreflight checks, before any load, that a daemon answers at home,
// that it has admitted the peer and that it holds a token for the action:
// each is a one-line error, not a run of failed calls.
func benchPreflight(ctx context.Context, c *http.Client, cfg benchConfig) error {
	get := func(path string, out any) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://meshagent"+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("no daemon answers at %s (is 'meshagent run --home %s' running?): %w", cfg.Home, cfg.Home, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("local API %s: %w", path, readAPIError(resp).err())
		}
		return json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out)
	}
	var status struct {
		PeerID string `json:"peer_id"`
	}
	if err := get("/v1/status", &status); err != nil {
		return err
	}
	if status.PeerID == cfg.To {
		return usagef("--to is this agent itself (%s)", cfg.To)
	}
	var peers []struct {
		PeerID string `json:"peer_id"`
		State  string `json:"state"`
	}
	if err := get("/v1/peers", &peers); err != nil {
		return err
	}
	known := false
	for _, p := range peers {
		known = known || p.PeerID == cfg.To
	}
	if !known {
		return usagef("unknown peer %s: the daemon at %s has not admitted it (see 'meshagent peers --home %s')", cfg.To, cfg.Home, cfg.Home)
	}
	var tokens []trust.TokenInfo
	if err := get("/v1/tokens", &tokens); err != nil {
		return err
	}
	for _, t := range tokens {
		if n := len(t.Links); n > 0 && slices.Contains(t.Links[n-1].Scopes, cfg.Action) {
			return nil
		}
	}
	return usagef("no token the daemon at %s holds grants %s (see 'meshagent tokens --home %s')", cfg.Home, cfg.Action, cfg.Home)
}

// runBench checks the daemon and runs the load until cfg.Duration ends or
// ctx is done (then calls in flight are still awaited and counted).
func runBench(ctx context.Context, cfg benchConfig) (*benchSummary, error) {
	lc, err := newLocalClient(cfg.Home)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, usagef("no agent at --home %s: %v", cfg.Home, err)
		}
		return nil, err
	}
	// One kept-alive connection to the socket per worker.
	c := lc.http
	if tr, ok := c.Transport.(*http.Transport); ok {
		tr.MaxIdleConnsPerHost = cfg.Concurrency
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = benchPreflight(pctx, c, cfg)
	cancel()
	if err != nil {
		return nil, err
	}
	b := &bencher{cfg: cfg, client: c}
	b.request, _ = json.Marshal(map[string]any{"to": cfg.To, "action": cfg.Action, "body": cfg.Body, "timeout": cfg.Timeout.String()})
	return b.run(ctx), nil
}

// bencher runs one bench: its workers keep their own counts (merged at
// the end); the progress line reads the shared atomic counters.
type bencher struct {
	cfg     benchConfig
	client  *http.Client
	request []byte

	calls, errs, missed atomic.Int64
}

// workerStats is what one worker counted.
type workerStats struct {
	hist    latencyHist
	ok      int64
	retries int64
	byCode  map[string]int64
}

// ticket is one scheduled call of the open loop.
type ticket struct{ at time.Time }

func (b *bencher) run(ctx context.Context) *benchSummary {
	start := time.Now()
	deadline := start.Add(b.cfg.Duration)
	stopStarting, stop := context.WithDeadline(ctx, deadline)
	defer stop()

	var tickets chan ticket
	if b.cfg.Rate > 0 {
		// Room for 10 ms of tickets beyond one per worker: a ticket waits
		// little before it starts or is missed, and the run ends soon after
		// its deadline.
		tickets = make(chan ticket, b.cfg.Concurrency+int(min(b.cfg.Rate/100, 1e4)))
		go b.schedule(stopStarting, start, tickets)
	}
	stats := make([]*workerStats, b.cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range stats {
		stats[i] = &workerStats{byCode: map[string]int64{}}
		wg.Add(1)
		go func(w *workerStats) {
			defer wg.Done()
			if tickets != nil {
				for t := range tickets {
					if ctx.Err() != nil {
						b.missed.Add(1) // interrupted before it started
						continue
					}
					b.one(stopStarting, w, t.at)
				}
				return
			}
			for stopStarting.Err() == nil {
				if wait := b.one(stopStarting, w, time.Now()); wait > 0 {
					sleepCtx(stopStarting, wait)
				}
			}
		}(stats[i])
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timeline := b.progress(start, done)
	return b.summarize(start, time.Since(start), stats, timeline)
}

// schedule issues the open loop's tickets, one every 1/cfg.Rate from
// start until the run's deadline (or until ctx ends). A ticket no worker
// can take (the queue is full) is counted as missed.
func (b *bencher) schedule(ctx context.Context, start time.Time, out chan<- ticket) {
	defer close(out)
	total := int64(math.Ceil(b.cfg.Duration.Seconds() * b.cfg.Rate)) // slots before the deadline
	tick := time.NewTicker(max(time.Duration(float64(time.Second)/b.cfg.Rate), time.Millisecond))
	defer tick.Stop()
	var sent int64
	for {
		due := min(int64(time.Since(start).Seconds()*b.cfg.Rate)+1, total) // slot 0 is due at start
		for ; sent < due; sent++ {
			at := start.Add(time.Duration(float64(sent) * float64(time.Second) / b.cfg.Rate))
			select {
			case out <- ticket{at}:
			default:
				b.missed.Add(1)
			}
		}
		if sent == total {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// one makes one call, started (or scheduled) at begun, and counts it. It
// returns how long a busy daemon asked to wait before the next call.
func (b *bencher) one(stopStarting context.Context, w *workerStats, begun time.Time) (wait time.Duration) {
	for {
		code, retryAfter := b.call()
		if code == "busy" && b.cfg.RetryBusy && time.Since(begun)+retryAfter < b.cfg.Timeout {
			w.retries++
			sleepCtx(stopStarting, retryAfter)
			continue
		}
		b.calls.Add(1)
		if code == "" {
			w.ok++
			w.hist.add(time.Since(begun))
			return 0
		}
		b.errs.Add(1)
		w.byCode[code]++
		return retryAfter
	}
}

// call sends one request through the local API: "" when it passed, else
// the reason code, and the Retry-After of a busy refusal.
func (b *bencher) call() (code string, retryAfter time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout+5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://meshagent/v1/send", bytes.NewReader(b.request))
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "timeout", 0
		}
		return "local_api", 0
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer)); err != nil {
			return "local_api", 0
		}
		return "", 0
	}
	e := readAPIError(resp)
	code = e.Code
	if code == "" {
		code = "http_" + strconv.Itoa(resp.StatusCode)
	}
	if code == "busy" || resp.StatusCode == http.StatusServiceUnavailable {
		// The header has whole seconds; a retry_after_ms in the answer, if
		// any, is finer.
		retryAfter = time.Duration(e.RetryAfterMS) * time.Millisecond
		if retryAfter <= 0 {
			retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
		}
	}
	return code, retryAfter
}

// parseRetryAfter reads a Retry-After header in seconds (fractions
// accepted) or as an HTTP date; 0 when absent or unreadable.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s > 0 && s < 3600 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// progress writes a line a second until done and returns the calls
// answered in each second.
func (b *bencher) progress(start time.Time, done <-chan struct{}) []timelineRow {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var rows []timelineRow
	var lastCalls, lastErrs int64
	record := func() timelineRow {
		c, e := b.calls.Load(), b.errs.Load()
		r := timelineRow{Second: len(rows) + 1, Calls: c - lastCalls, Errors: e - lastErrs}
		lastCalls, lastErrs = c, e
		rows = append(rows, r)
		return r
	}
	for {
		select {
		case <-done:
			if b.calls.Load() > lastCalls || len(rows) == 0 {
				record()
			}
			return rows
		case now := <-tick.C:
			r := record()
			if b.cfg.Progress != nil {
				line := fmt.Sprintf("[%4.0fs] %d calls, %d/s in the last second, %d errors", now.Sub(start).Seconds(), lastCalls, r.Calls, lastErrs)
				if m := b.missed.Load(); m > 0 {
					line += fmt.Sprintf(", %d missed (workers all busy)", m)
				}
				fmt.Fprintln(b.cfg.Progress, line)
			}
		}
	}
}

func (b *bencher) summarize(start time.Time, elapsed time.Duration, stats []*workerStats, timeline []timelineRow) *benchSummary {
	s := &benchSummary{To: b.cfg.To, Action: b.cfg.Action, Concurrency: b.cfg.Concurrency, Rate: b.cfg.Rate,
		BodyBytes: len(b.cfg.Body), Seconds: elapsed.Seconds(), ErrorsByCode: map[string]int64{},
		Missed: b.missed.Load(), Timeline: timeline}
	var h latencyHist
	for _, w := range stats {
		h.merge(&w.hist)
		s.OK += w.ok
		s.BusyRetries += w.retries
		for c, n := range w.byCode {
			s.ErrorsByCode[c] += n
			s.Errors += n
		}
	}
	s.Calls = s.OK + s.Errors
	if sec := elapsed.Seconds(); sec > 0 {
		s.CallsPerS, s.OKPerS = float64(s.Calls)/sec, float64(s.OK)/sec
	}
	if h.n > 0 {
		s.Latency = &latencySummary{Min: ms(h.min), Mean: ms(h.sum / time.Duration(h.n)),
			P50: ms(h.quantile(0.5)), P90: ms(h.quantile(0.9)), P99: ms(h.quantile(0.99)),
			P999: ms(h.quantile(0.999)), Max: ms(h.max)}
		s.Histogram = h.rows(12)
	}
	return s
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// print writes the summary as text.
func (s *benchSummary) print(w io.Writer) {
	loop := "closed loop"
	if s.Rate > 0 {
		loop = fmt.Sprintf("open loop at %g calls/s", s.Rate)
	}
	fmt.Fprintf(w, "%s on %s: %d workers, %s, %d-byte body\n", s.Action, s.To, s.Concurrency, loop, s.BodyBytes)
	fmt.Fprintf(w, "calls     %d in %.2fs: %.1f calls/s (ok %d, %.1f/s; errors %d)\n", s.Calls, s.Seconds, s.CallsPerS, s.OK, s.OKPerS, s.Errors)
	if s.Missed > 0 {
		fmt.Fprintf(w, "missed    %d scheduled calls not started: every worker was busy (raise --concurrency)\n", s.Missed)
	}
	if s.BusyRetries > 0 {
		fmt.Fprintf(w, "retried   %d busy refusals\n", s.BusyRetries)
	}
	if l := s.Latency; l != nil {
		fmt.Fprintf(w, "latency   min %s  mean %s  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s (calls that passed", fmtMs(l.Min), fmtMs(l.Mean),
			fmtMs(l.P50), fmtMs(l.P90), fmtMs(l.P99), fmtMs(l.P999), fmtMs(l.Max))
		if s.Rate > 0 {
			fmt.Fprint(w, ", from each call's scheduled start")
		}
		fmt.Fprintln(w, ")")
		var top uint64
		for _, r := range s.Histogram {
			top = max(top, r.Count)
		}
		for _, r := range s.Histogram {
			bar := strings.Repeat("#", int(math.Ceil(40*float64(r.Count)/float64(max(top, 1)))))
			fmt.Fprintf(w, "  %9s - %-9s %9d %s\n", fmtMs(r.FromMs), fmtMs(r.ToMs), r.Count, bar)
		}
	}
	if len(s.ErrorsByCode) > 0 {
		fmt.Fprintln(w, "errors by code")
		codes := make([]string, 0, len(s.ErrorsByCode))
		for c := range s.ErrorsByCode {
			codes = append(codes, c)
		}
		sort.Slice(codes, func(i, j int) bool {
			a, b := s.ErrorsByCode[codes[i]], s.ErrorsByCode[codes[j]]
			return a > b || a == b && codes[i] < codes[j]
		})
		for _, c := range codes {
			fmt.Fprintf(w, "  %-20s %d\n", c, s.ErrorsByCode[c])
		}
	}
}

func fmtMs(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.3fms", v)
	}
}

// latencyHist counts durations in log-linear buckets, as HdrHistogram
// does: exact below 128 ns, then 64 buckets for each power of two (each at
// most 1/64 wide), so that a run of any length takes a few KiB.
type latencyHist struct {
	counts   []uint64
	n        uint64
	sum      time.Duration
	min, max time.Duration
}

const histSub = 64

func histIndex(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(v) - 7 // v>>e is in [64, 128)
	return 2*histSub + (e-1)*histSub + int(v>>e) - histSub
}

// histLower is the smallest duration bucket i counts.
func histLower(i int) time.Duration {
	if i < 2*histSub {
		return time.Duration(i)
	}
	e := (i-2*histSub)/histSub + 1
	return time.Duration(uint64((i-2*histSub)%histSub+histSub) << e)
}

func (h *latencyHist) add(d time.Duration) {
	i := histIndex(d)
	if i >= len(h.counts) {
		h.counts = append(h.counts, make([]uint64, i+1-len(h.counts))...)
	}
	h.counts[i]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.n++
	h.sum += d
}

func (h *latencyHist) merge(o *latencyHist) {
	if o.n == 0 {
		return
	}
	if len(o.counts) > len(h.counts) {
		h.counts = append(h.counts, make([]uint64, len(o.counts)-len(h.counts))...)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// quantile is the upper end of the bucket that holds the q-th value,
// within [min, max].
func (h *latencyHist) quantile(q float64) time.Duration {
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(max(histLower(i+1)-1, h.min), h.max)
		}
	}
	return h.max
}

// rows groups the buckets into k rows of equal ratio from min to max.
func (h *latencyHist) rows(k int) []histogramRow {
	lo, hi := float64(max(h.min, 1)), float64(max(h.max, 1))
	if hi <= lo*1.01 {
		return []histogramRow{{FromMs: ms(h.min), ToMs: ms(h.max), Count: h.n}}
	}
	step := math.Pow(hi/lo, 1/float64(k))
	out := make([]histogramRow, k)
	for r := range out {
		out[r].FromMs, out[r].ToMs = ms(time.Duration(lo*math.Pow(step, float64(r)))), ms(time.Duration(lo*math.Pow(step, float64(r+1))))
	}
	out[k-1].ToMs = ms(h.max)
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		v := float64(max(histLower(i), h.min, 1))
		r := min(max(int(math.Log(v/lo)/math.Log(step)), 0), k-1)
		out[r].Count += c
	}
	return out
}
