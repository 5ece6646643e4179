package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"slices"
)

// Plot geometry: a log-scale latency axis from 1 ms to 100 s.
const (
	plotW, plotH          = 900, 520
	left, right, top, bot = 70, 20, 20, 150
	minLog10, maxLog10    = 0.0, 5.0
)

var (
	routeColors = map[string][]color.RGBA{ // by scale, small to large
		RouteA: {{0x9e, 0xc5, 0xe8, 255}, {0x42, 0x85, 0xc8, 255}, {0x0b, 0x3d, 0x7a, 255}},
		RouteB: {{0xf5, 0xb7, 0x8e, 255}, {0xe0, 0x6c, 0x2e, 255}, {0x8c, 0x2d, 0x04, 255}},
		RouteK: {{0xa8, 0xdd, 0xa0, 255}, {0x41, 0xab, 0x5d, 255}, {0x00, 0x5a, 0x32, 255}},
	}
	ink  = color.RGBA{0x22, 0x22, 0x22, 255}
	grid = color.RGBA{0xdd, 0xdd, 0xdd, 255}
)

// PlotCDF draws each result's change-to-client latency CDF into a PNG.
func PlotCDF(results []Result) ([]byte, error) {
	img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	x0, x1, y0, y1 := left, plotW-right, plotH-bot, top
	xOf := func(ms float64) int {
		l := math.Log10(max(ms, 1))
		return x0 + int((min(l, maxLog10)-minLog10)/(maxLog10-minLog10)*float64(x1-x0))
	}
	yOf := func(q float64) int { return y0 - int(q*float64(y0-y1)) }
	for _, ms := range []float64{1, 10, 100, 1000, 10000, 100000} {
		x := xOf(ms)
		line(img, x, y1, x, y0, grid)
		label := fmt.Sprintf("%gMS", ms)
		if ms >= 1000 {
			label = fmt.Sprintf("%gS", ms/1000)
		}
		drawText(img, x-textWidth(label)/2, y0+8, label, ink)
	}
	for _, q := range []float64{0, .5, .9, .99} {
		y := yOf(q)
		line(img, x0, y, x1, y, grid)
		label := fmt.Sprintf("%g", q)
		drawText(img, x0-8-textWidth(label), y-5, label, ink)
	}
	line(img, x0, y0, x1, y0, ink)
	line(img, x0, y0, x0, y1, ink)
	drawText(img, (x0+x1)/2-textWidth("CHANGE TO CLIENT LATENCY")/2, y0+26, "change to client latency", ink)

	scaleIdx := map[string]map[int]int{}
	ly := y0 + 50
	for i, r := range results {
		if len(r.SampleMillis) == 0 {
			continue
		}
		if scaleIdx[r.Route] == nil {
			scaleIdx[r.Route] = map[int]int{}
		}
		idx, ok := scaleIdx[r.Route][r.Services]
		if !ok {
			idx = len(scaleIdx[r.Route])
			scaleIdx[r.Route][r.Services] = idx
		}
		c := routeColors[r.Route][min(idx, 2)]
		ms := slices.Sorted(slices.Values(r.SampleMillis))
		px, py := xOf(ms[0]), yOf(0)
		for k, v := range ms {
			x, y := xOf(v), yOf(float64(k+1)/float64(len(ms)))
			thick(img, px, py, x, py, c) // a step function: right, then up
			thick(img, x, py, x, y, c)
			px, py = x, y
		}
		lx := x0 + (i%2)*((x1-x0)/2)
		if i%2 == 0 && i > 0 {
			ly += 16
		}
		thick(img, lx, ly+5, lx+24, ly+5, c)
		short := map[string]string{RouteA: "A CONSUL REGISTRY", RouteK: "K KUBERNETES SERVICES", RouteB: "B SE+WE"}[r.Route]
		drawText(img, lx+32, ly, fmt.Sprintf("%s %dX%d P99 %.0fMS", short, r.Services, r.PerSvc, r.Latency.P99), ink)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func thick(img *image.RGBA, xa, ya, xb, yb int, c color.Color) {
	line(img, xa, ya, xb, yb, c)
	line(img, xa+1, ya+1, xb+1, yb+1, c)
}

// line draws a horizontal, vertical or diagonal segment (Bresenham).
func line(img *image.RGBA, xa, ya, xb, yb int, c color.Color) {
	dx, dy := abs(xb-xa), -abs(yb-ya)
	sx, sy := sign(xb-xa), sign(yb-ya)
	e := dx + dy
	for {
		img.Set(xa, ya, c)
		if xa == xb && ya == yb {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			xa += sx
		}
		if e2 <= dx {
			e += dx
			ya += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
