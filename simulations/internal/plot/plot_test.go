package plot

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

// Both charts write a PNG of the kit's size.
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
		if err != nil || img.Bounds().Dx() != width || img.Bounds().Dy() != height {
			t.Fatalf("%s: %v %v", name, img.Bounds(), err)
		}
	}
}
