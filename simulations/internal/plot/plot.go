// Package plot is a small plotting kit: line charts and histograms as PNG,
// with axes, tick labels and a legend, drawn with the standard image
// package and a bitmap font. Enough for the reports of make sim and make
// soak; no dependency on a plotting library.
package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"sort"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

const (
	width, height = 720, 420
	left, right   = 70, 20
	top, bottom   = 40, 60
)

var palette = []color.RGBA{{31, 119, 180, 255}, {214, 39, 40, 255}, {44, 160, 44, 255}, {148, 103, 189, 255}}

// Series is one named line (X and Y of equal length) or, for Histogram,
// one set of values (Y; X unused).
type Series struct {
	Name string
	X, Y []float64
}

type canvas struct {
	img                    *image.RGBA
	xmin, xmax, ymin, ymax float64
}

func newCanvas(title, xlabel, ylabel string, xmin, xmax, ymin, ymax float64) *canvas {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	if ymax <= ymin {
		ymax = ymin + 1
	}
	c := &canvas{img, xmin, xmax, ymin, ymax}
	black := color.RGBA{0, 0, 0, 255}
	grey := color.RGBA{220, 220, 220, 255}
	for i := 0; i <= 5; i++ {
		fy := ymin + (ymax-ymin)*float64(i)/5
		_, py := c.px(xmin, fy)
		c.line(left, py, width-right, py, grey)
		c.text(4, py+4, trim(fy), black)
		fx := xmin + (xmax-xmin)*float64(i)/5
		px, _ := c.px(fx, ymin)
		c.line(px, height-bottom, px, height-bottom+5, black)
		c.text(px-12, height-bottom+18, trim(fx), black)
	}
	c.line(left, height-bottom, width-right, height-bottom, black)
	c.line(left, top, left, height-bottom, black)
	c.text(left, 20, title, black)
	c.text(width/2-len(xlabel)*7/2, height-16, xlabel, black)
	c.text(4, top-8, ylabel, black)
	return c
}

func trim(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e6:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

func (c *canvas) px(x, y float64) (int, int) {
	px := left + int((x-c.xmin)/(c.xmax-c.xmin)*float64(width-left-right))
	py := height - bottom - int((y-c.ymin)/(c.ymax-c.ymin)*float64(height-top-bottom))
	return px, py
}

func (c *canvas) line(x0, y0, x1, y1 int, col color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	err := dx + dy
	for {
		c.img.Set(x0, y0, col)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			x0 += sx
		}
		if e2 <= dx {
			err += dx
			y0 += sy
		}
	}
}

func (c *canvas) rect(x0, y0, x1, y1 int, col color.Color) {
	for x := min(x0, x1); x <= max(x0, x1); x++ {
		for y := min(y0, y1); y <= max(y0, y1); y++ {
			c.img.Set(x, y, col)
		}
	}
}

func (c *canvas) text(x, y int, s string, col color.Color) {
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func (c *canvas) legend(names []string) {
	for i, n := range names {
		y := top + 14*i
		c.rect(width-right-150, y-8, width-right-140, y, palette[i%len(palette)])
		c.text(width-right-134, y, n, color.RGBA{0, 0, 0, 255})
	}
}

func (c *canvas) save(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, c.img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LineChart draws each series as points joined by lines into a PNG at path.
// Both axes start at 0.
func LineChart(path, title, xlabel, ylabel string, ss []Series) error {
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range ss {
		for i := range s.X {
			xmin, xmax, ymax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i]), math.Max(ymax, s.Y[i])
		}
	}
	c := newCanvas(title, xlabel, ylabel, 0, xmax*1.05, 0, ymax*1.15)
	var names []string
	for k, s := range ss {
		col := palette[k%len(palette)]
		for i := range s.X {
			x, y := c.px(s.X[i], s.Y[i])
			c.rect(x-3, y-3, x+3, y+3, col)
			if i > 0 {
				x0, y0 := c.px(s.X[i-1], s.Y[i-1])
				c.line(x0, y0, x, y, col)
			}
		}
		names = append(names, s.Name)
	}
	c.legend(names)
	return c.save(path)
}

// Histogram draws the distribution of each series' values (in bins over a
// shared range) as side-by-side bars, normalised to fractions, into a PNG
// at path.
func Histogram(path, title, xlabel string, ss []Series, bins int) error {
	// The range runs from the smallest value to the 99th percentile of all
	// of them, so that a few outliers do not squash the distribution; values
	// above it land in the last bin.
	var all []float64
	for _, s := range ss {
		all = append(all, s.Y...)
	}
	sort.Float64s(all)
	lo, hi := all[0], all[int(float64(len(all)-1)*0.99)]
	if hi <= lo {
		hi = lo + 1
	}
	counts := make([][]float64, len(ss))
	ymax := 0.0
	for k, s := range ss {
		counts[k] = make([]float64, bins)
		for _, v := range s.Y {
			b := min(bins-1, int((v-lo)/(hi-lo)*float64(bins)))
			counts[k][b]++
		}
		for b := range counts[k] {
			counts[k][b] /= float64(max(1, len(s.Y)))
			ymax = math.Max(ymax, counts[k][b])
		}
	}
	c := newCanvas(title, xlabel, "fraction", lo, hi, 0, ymax*1.15)
	bw := (hi - lo) / float64(bins)
	var names []string
	for k := range ss {
		for b := 0; b < bins; b++ {
			x0 := lo + bw*float64(b) + bw*float64(k)/float64(len(ss))
			x1 := x0 + bw/float64(len(ss))*0.9
			px0, py := c.px(x0, counts[k][b])
			px1, _ := c.px(x1, 0)
			c.rect(px0, py, px1, height-bottom, palette[k%len(palette)])
		}
		names = append(names, ss[k].Name)
	}
	c.legend(names)
	return c.save(path)
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}
