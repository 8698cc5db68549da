// Package chart draws the figures of the simulation and soak reports (make
// sim, make soak): line charts and histograms as 720 × 420 PNG files, with
// gonum.org/v1/plot.
package chart

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Width and Height are the size of every chart in pixels.
const Width, Height = 720, 420

const dpi = 96

var palette = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {148, 103, 189, 255}}

// Series is one named line (X and Y of equal length) or, for Histogram,
// one set of values (Y; X unused).
type Series struct {
	Name string
	X, Y []float64
}

// LineChart draws each series as points joined by lines into a PNG at
// path. Both axes start at 0; the legend is at the top right.
func LineChart(path, title, xlabel, ylabel string, ss []Series) error {
	p := newPlot(title, xlabel, ylabel)
	ymax := 0.0
	for k, s := range ss {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("chart: series %q has %d x and %d y", s.Name, len(s.X), len(s.Y))
		}
		if len(s.X) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(s.X))
		for i := range s.X {
			xys[i].X, xys[i].Y = s.X[i], s.Y[i]
			ymax = math.Max(ymax, s.Y[i])
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("chart: series %q: %w", s.Name, err)
		}
		col := palette[k%len(palette)]
		line.Color, line.Width = col, vg.Points(1.5)
		points.Color, points.Shape, points.Radius = col, draw.BoxGlyph{}, vg.Points(2.5)
		p.Add(line, points)
		p.Legend.Add(s.Name, line, points)
	}
	p.X.Min, p.Y.Min = 0, 0
	p.Y.Max = math.Max(p.Y.Max, headroom(ymax, len(ss)))
	return save(p, path)
}

// Histogram draws the distribution of each series' values, in bins over a
// shared range, as side-by-side bars of the fraction of the series' values
// in each bin, into a PNG at path. The range runs from the smallest value
// to the 99th percentile of all of them, so that a few outliers do not
// squash the distribution; values above it land in the last bin.
func Histogram(path, title, xlabel string, ss []Series, bins int) error {
	if bins <= 0 {
		return fmt.Errorf("chart: %d bins", bins)
	}
	var all []float64
	for _, s := range ss {
		all = append(all, s.Y...)
	}
	if len(all) == 0 {
		return fmt.Errorf("chart: no values for %q", title)
	}
	slices.Sort(all)
	lo, hi := all[0], all[int(float64(len(all)-1)*0.99)]
	if hi <= lo {
		hi = lo + 1
	}
	p := newPlot(title, xlabel, "fraction")
	bw := (hi - lo) / float64(bins)
	for k, s := range ss {
		h := &plotter.Histogram{Bins: make([]plotter.HistogramBin, bins), Width: bw / float64(len(ss)), FillColor: palette[k%len(palette)]}
		for b := range h.Bins {
			h.Bins[b].Min = lo + bw*float64(b) + bw*float64(k)/float64(len(ss))
			h.Bins[b].Max = h.Bins[b].Min + bw/float64(len(ss))*0.9
		}
		for _, v := range s.Y {
			b := max(0, min(bins-1, int((v-lo)/(hi-lo)*float64(bins))))
			h.Bins[b].Weight++
		}
		for b := range h.Bins {
			h.Bins[b].Weight /= float64(max(1, len(s.Y)))
		}
		h.LineStyle.Width = 0
		p.Add(h)
		p.Legend.Add(s.Name, h)
	}
	p.Y.Min = 0
	p.Y.Max = headroom(p.Y.Max, len(ss))
	return save(p, path)
}

func newPlot(title, xlabel, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, xlabel, ylabel
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	return p
}

// headroom returns the top of a y axis whose data reach ymax, leaving the
// legend's entries room above them.
func headroom(ymax float64, entries int) float64 {
	f := float64(entries*16+8) / float64(Height-80) // of the plot's height, about
	return ymax / (1 - min(f, 0.5))
}

// save writes p as a PNG at path, with a margin of 8 pixels.
func save(p *plot.Plot, path string) error {
	c := vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(Width*vg.Inch/dpi, Height*vg.Inch/dpi), vgimg.UseDPI(dpi))}
	const margin = 8 * vg.Inch / dpi
	p.Draw(draw.Crop(draw.New(c), margin, -margin, margin, -margin))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
