package chart

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// Both charts write a PNG of Width × Height pixels from a small input.
func TestChartsWritePNG(t *testing.T) {
	dir := t.TempDir()
	xs, ys := []float64{0, 1, 2, 3}, []float64{5, 7, 6, 9}
	charts := map[string]func(string) error{
		"line.png": func(p string) error {
			return LineChart(p, "title", "x", "y", []Series{{Name: "a", X: xs, Y: ys}, {Name: "b", X: xs, Y: []float64{1, 1, 1, 1}}})
		},
		"hist.png": func(p string) error {
			return Histogram(p, "title", "ms", []Series{{Name: "a", Y: ys}, {Name: "b", Y: xs}}, 5)
		},
	}
	for name, draw := range charts {
		p := filepath.Join(dir, name)
		if err := draw(p); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if img.Bounds().Dx() != Width || img.Bounds().Dy() != Height {
			t.Fatalf("%s: %v, want %d × %d", name, img.Bounds(), Width, Height)
		}
	}
}

// A line series with fewer y than x, and a histogram with no bins or no
// values, are errors, not a panic or an empty file.
func TestChartsRefuseBadInput(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.png")
	if err := LineChart(p, "t", "x", "y", []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{1}}}); err == nil {
		t.Error("line chart with 2 x and 1 y: no error")
	}
	if err := Histogram(p, "t", "x", []Series{{Name: "a", Y: []float64{1}}}, 0); err == nil {
		t.Error("histogram with 0 bins: no error")
	}
	if err := Histogram(p, "t", "x", []Series{{Name: "a"}}, 5); err == nil {
		t.Error("histogram of no values: no error")
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("a refused chart left a file: %v", err)
	}
}
