package chart

import (
	"math"
	"os"
	"path/filepath"
	"testing"
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

// BenchmarkLineChart renders soakLike to a PNG file and reports the PNG's
// size. Its kit half, the hand-drawn charts this package replaced, ran
// until 2f67a6d (BENCHMARKS.md).
func BenchmarkLineChart(b *testing.B) {
	ss := soakLike()
	b.Run("gonum", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "chart.png")
		for b.Loop() {
			if err := LineChart(path, "Daemon memory", "minutes", "MiB", ss); err != nil {
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
