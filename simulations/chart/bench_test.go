package chart

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	kit "github.com/meshagent/meshagent/simulations/internal/plot"
)

// soakLike is the largest line chart the reports draw: make soak's memory
// plot, four series of a sample every 10 s for 10 minutes.
func soakLike() []Series {
	var ss []Series
	for k, name := range []string{"alice RSS", "alice heap in use", "bob RSS", "bob heap in use"} {
		s := Series{Name: name}
		for i := 0; i <= 60; i++ {
			s.X = append(s.X, float64(i)/6)
			s.Y = append(s.Y, 40+10*float64(k)+3*math.Sin(float64(i)/5))
		}
		ss = append(ss, s)
	}
	return ss
}

// BenchmarkLineChart renders the same line chart (soakLike) to a PNG file
// with gonum.org/v1/plot (this package) and with the hand-drawn kit it
// replaces (simulations/internal/plot: Bresenham lines, a 7×13 bitmap
// font), and reports each PNG's size.
func BenchmarkLineChart(b *testing.B) {
	ss := soakLike()
	kitSS := make([]kit.Series, len(ss))
	for i, s := range ss {
		kitSS[i] = kit.Series{Name: s.Name, X: s.X, Y: s.Y}
	}
	for _, impl := range []struct {
		name string
		draw func(path string) error
	}{
		{"gonum", func(p string) error { return LineChart(p, "Daemon memory", "minutes", "MiB", ss) }},
		{"kit", func(p string) error { return kit.LineChart(p, "Daemon memory", "minutes", "MiB", kitSS) }},
	} {
		b.Run(impl.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "chart.png")
			for b.Loop() {
				if err := impl.draw(path); err != nil {
					b.Fatal(err)
				}
			}
			fi, err := os.Stat(path)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(fi.Size()), "png_bytes")
		})
	}
}
