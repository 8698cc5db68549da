package main

import (
	"strings"
	"testing"
	"time"
)

// The report's verdicts from synthetic samples: a flat daemon passes, one
// that grows after the window fails, a sagging throughput fails, and every
// refusal is counted.
func TestReportVerdicts(t *testing.T) {
	r := &report{cfg: config{duration: 10 * time.Minute, every: 10 * time.Second, action: "ping:agent"}, window: 5 * time.Minute,
		refused: map[string]map[string]float64{"alice": {}, "bob": {}}}
	for s := 0; s <= 600; s += 10 {
		at := time.Duration(s) * time.Second
		r.samples = append(r.samples,
			sample{t: at, daemon: "alice", rss: 40 << 20, heapInuse: 20 << 20, cpu: float64(s) / 2},
			sample{t: at, daemon: "bob", rss: 40 << 20, heapInuse: float64(20<<20) * (1 + float64(s)/600), cpu: float64(s)})
	}
	for s := 1; s <= 600; s++ {
		r.bench.Timeline = append(r.bench.Timeline, struct {
			Second int   `json:"second"`
			Calls  int64 `json:"calls"`
			Errors int64 `json:"errors"`
		}{Second: s, Calls: 1000})
	}
	if a, b := r.memory("alice"), r.memory("bob"); !a.measured || a.growth != 0 || a.slopePerMin != 0 || b.growth < 0.1 || b.slopePerMin <= 0 {
		t.Fatalf("alice %+v, bob %+v", a, b)
	}
	if bs := r.buckets(60); len(bs) != 10 || bs[0].okS != 1000 || bs[9].okS != 1000 {
		t.Fatalf("buckets %+v", bs)
	}
	if got := r.cpu("bob"); got != "100 % of a core" {
		t.Fatalf("cpu %q", got)
	}
	var w strings.Builder
	if r.markdown(&w) || !strings.Contains(w.String(), "| bob's memory flat") || strings.Count(w.String(), "**no**") != 1 {
		t.Fatalf("bob's growth is the one goal not met:\n%s", w.String())
	}

	// Throughput that sags by a fifth, and refusals anywhere, fail.
	for i := range r.bench.Timeline[540:] {
		r.bench.Timeline[540+i].Calls = 800
	}
	r.refused["bob"] = rejections("meshagent_decisions_total{decision=\"reject\",direction=\"in\",kind=\"request\",reason=\"replay_full\"} 7\n" +
		"meshagent_decisions_total{decision=\"accept\",direction=\"in\",kind=\"request\",reason=\"\"} 9\nmeshagent_throttled_requests_total 2\n")
	if r.refused["bob"]["replay_full"] != 7 || r.refused["bob"]["(throttled, unchecked)"] != 2 || len(r.refused["bob"]) != 2 {
		t.Fatalf("rejections %v", r.refused["bob"])
	}
	w.Reset()
	if r.markdown(&w) || strings.Count(w.String(), "**no**") != 3 || !strings.Contains(w.String(), "`replay_full` | 7") {
		t.Fatalf("want refusals, sag and growth not met:\n%s", w.String())
	}
}
