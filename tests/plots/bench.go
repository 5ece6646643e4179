package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// report is the part of tests/bench's bench.json the pictures use.
type report struct {
	When    string   `json:"when"`
	Istiod  string   `json:"istiod"`
	Results []result `json:"results"`
}

type result struct {
	Route        string  `json:"route"`
	Services     int     `json:"services"`
	PerSvc       int     `json:"instances_per_service"`
	SyncSeconds  float64 `json:"initial_sync_seconds"`
	Synced       bool    `json:"synced"`
	CPUChurnSec  float64 `json:"istiod_cpu_churn_seconds"`
	PeakRSSBytes int64   `json:"istiod_peak_rss_bytes"`
	Changes      int     `json:"changes"`
	Istiods      int     `json:"istiods"`
	Release      string  `json:"istio_release"` // set when a run measured several
	ConsulPerChg float64 `json:"consul_requests_per_change"`
	ConsulBytes  float64 `json:"consul_bytes_per_change"`
	ConsulRSS    int64   `json:"consul_peak_rss_bytes"`
	Latency      struct {
		P99 float64 `json:"p99"`
	} `json:"change_to_client_ms"`
	SampleMillis []float64 `json:"latency_samples_ms"`
}

// routeColors: Route A blue, K green, C purple, E pink, B orange, P grey (as the bench names them).
var routeColors = map[string]color.RGBA{
	"A": {0x1f, 0x5f, 0xa8, 255}, "K": {0x2e, 0x8b, 0x57, 255}, "C": {0x7b, 0x3f, 0x9e, 255}, "B": {0xd9, 0x5f, 0x0e, 255},
	"E": {0xc2, 0x3b, 0x80, 255}, "P": {0x70, 0x70, 0x70, 255},
}

// scaleDashes tell scales apart within a route: solid for the largest.
var scaleDashes = [][]vg.Length{{vg.Points(2), vg.Points(2)}, {vg.Points(6), vg.Points(3)}, nil}

func readReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := &report{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// benchPictures draws the latency CDF of every (route, scale) and, when the
// report has several scales, how cost grows with them.
func benchPictures(in, dir string) ([]string, error) {
	r, err := readReport(in)
	if err != nil {
		return nil, err
	}
	var out []string
	cdf, err := latencyCDF(r)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "latency-cdf.png")
	if err := save(cdf, 9*vg.Inch, 5.5*vg.Inch, p); err != nil {
		return nil, err
	}
	out = append(out, p)
	if len(scales(r)) > 1 {
		p = filepath.Join(dir, "growth.png")
		if err := growth(r, p); err != nil {
			return nil, err
		}
		t := filepath.Join(dir, "growth.md")
		if err := os.WriteFile(t, []byte(growthTable(r)), 0o644); err != nil {
			return nil, err
		}
		out = append(out, p, t)
	}
	return out, nil
}

func scales(r *report) []int {
	var s []int
	for _, x := range r.Results {
		s = append(s, x.Services)
	}
	slices.Sort(s)
	return slices.Compact(s)
}

func latencyCDF(r *report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Change → client latency (istiod %s, %s)", strings.TrimPrefix(r.Istiod, "client version: "), r.When[:min(len(r.When), 10)])
	p.X.Label.Text = "latency (ms, log scale)"
	p.Y.Label.Text = "fraction of (change, client) samples"
	p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, logTicks{}
	p.Y.Min, p.Y.Max = 0, 1
	p.Legend.Top, p.Legend.Left = false, false
	p.Add(plotter.NewGrid())
	sc := scales(r)
	for _, x := range r.Results {
		if len(x.SampleMillis) == 0 {
			continue
		}
		ms := slices.Sorted(slices.Values(x.SampleMillis))
		pts := make(plotter.XYs, 0, 2*len(ms))
		for i, v := range ms {
			v = math.Max(v, 1)
			if i > 0 {
				pts = append(pts, plotter.XY{X: v, Y: float64(i) / float64(len(ms))})
			}
			pts = append(pts, plotter.XY{X: v, Y: float64(i+1) / float64(len(ms))})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		route := x.Route[:1]
		l.Color = routeColors[route]
		l.Width = vg.Points(1.5)
		l.Dashes = scaleDashes[max(0, len(scaleDashes)-len(sc)+slices.Index(sc, x.Services))]
		replicas := ""
		if x.Istiods > 1 {
			replicas = fmt.Sprintf(", %d istiods", x.Istiods)
			l.Dashes = []vg.Length{vg.Points(1), vg.Points(float64(x.Istiods))}
		}
		if x.Release != "" && x.Release != r.Results[0].Release {
			// Releases after the first dotted, as replicas are.
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		if x.Release != "" {
			replicas += ", Istio " + x.Release
		}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s %d×%d%s  p99 %.0f ms", shortRoute(x.Route), x.Services, x.PerSvc, replicas, x.Latency.P99), l)
	}
	return p, nil
}

func shortRoute(route string) string {
	name, _, _ := strings.Cut(route, " (")
	return name
}

// growthMetric is one figure drawn against the instance count.
type growthMetric struct {
	title, unit string
	of          func(result) (float64, bool)
}

// growthMetrics: initial sync, change → client p99, istiod CPU per change
// during churn, istiod peak RSS, Consul's response bytes per change and its
// peak RSS. A route that never synced at a scale has no point there.
var growthMetrics = []growthMetric{
	{"initial sync", "s", func(x result) (float64, bool) { return x.SyncSeconds, x.Synced }},
	{"change → client p99", "ms", func(x result) (float64, bool) { return x.Latency.P99, x.Synced && x.Latency.P99 > 0 }},
	{"istiod CPU per change (churn)", "ms", func(x result) (float64, bool) {
		return 1000 * x.CPUChurnSec / float64(max(x.Changes, 1)), x.Synced && x.Changes > 0
	}},
	{"istiod peak RSS", "MiB", func(x result) (float64, bool) { return float64(x.PeakRSSBytes) / (1 << 20), x.PeakRSSBytes > 0 }},
	{"Consul response bytes per change", "bytes", func(x result) (float64, bool) { return x.ConsulBytes, x.Synced && x.ConsulBytes > 0 }},
	{"Consul peak RSS", "MiB", func(x result) (float64, bool) { return float64(x.ConsulRSS) / (1 << 20), x.ConsulRSS > 0 }},
}

// growthRoutes lists the routes of single-istiod results, in order.
func growthRoutes(r *report) []string {
	var routes []string
	for _, x := range r.Results {
		if x.Istiods <= 1 && !slices.Contains(routes, x.Route) {
			routes = append(routes, x.Route)
		}
	}
	return routes
}

// growthPoints are route's (instances, figure) points.
func growthPoints(r *report, route string, m growthMetric) plotter.XYs {
	var pts plotter.XYs
	for _, x := range r.Results {
		if v, ok := m.of(x); x.Route == route && x.Istiods <= 1 && ok && v > 0 {
			pts = append(pts, plotter.XY{X: float64(x.Services * x.PerSvc), Y: v})
		}
	}
	return pts
}

// growth draws growthMetrics in a 3×2 grid, log-log against the instance count.
func growth(r *report, path string) error {
	metrics := growthMetrics
	routes := growthRoutes(r)
	plots := [][]*plot.Plot{make([]*plot.Plot, 2), make([]*plot.Plot, 2), make([]*plot.Plot, 2)}
	for i, m := range metrics {
		p := plot.New()
		p.Title.Text = m.title
		p.X.Label.Text = "instances"
		p.Y.Label.Text = m.unit
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, logTicks{}
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, logTicks{}
		p.Add(plotter.NewGrid())
		p.Legend.Top, p.Legend.Left = true, true
		for _, route := range routes {
			pts := growthPoints(r, route, m)
			if len(pts) == 0 {
				continue
			}
			lp, sp, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			c := routeColors[route[:1]]
			lp.Color, sp.Color, sp.Shape = c, c, draw.CircleGlyph{}
			p.Add(lp, sp)
			label := shortRoute(route)
			if k, ok := exponent(pts); ok {
				label += fmt.Sprintf(" (grows as n^%.2f)", k)
			}
			p.Legend.Add(label, lp, sp)
		}
		plots[i/2][i%2] = p
	}
	img := vgimg.New(12*vg.Inch, 12*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 3, Cols: 2, PadX: vg.Inch / 4, PadY: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8,
		PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	return writePNG(img, path)
}

// growthTable is the figures of growth.png as markdown, one row per
// (route, scale), and each route's fitted exponent of every figure.
func growthTable(r *report) string {
	var b strings.Builder
	b.WriteString("| route | instances |")
	for _, m := range growthMetrics {
		fmt.Fprintf(&b, " %s (%s) |", m.title, m.unit)
	}
	b.WriteString(" Consul requests per change |\n|---|---:|" + strings.Repeat("---:|", len(growthMetrics)+1) + "\n")
	for _, route := range growthRoutes(r) {
		for _, x := range r.Results {
			if x.Route != route || x.Istiods > 1 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d |", shortRoute(route), x.Services*x.PerSvc)
			for _, m := range growthMetrics {
				if v, ok := m.of(x); ok {
					fmt.Fprintf(&b, " %s |", strconv.FormatFloat(v, 'f', figures(v), 64))
				} else if !x.Synced {
					fmt.Fprintf(&b, " never synced (%.0f s) |", x.SyncSeconds)
				} else {
					b.WriteString(" – |")
				}
			}
			if x.ConsulPerChg > 0 {
				fmt.Fprintf(&b, " %.2f |\n", x.ConsulPerChg)
			} else {
				b.WriteString(" – |\n")
			}
		}
		fmt.Fprintf(&b, "| %s | **exponent** |", shortRoute(route))
		for _, m := range growthMetrics {
			if k, ok := exponent(growthPoints(r, route, m)); ok {
				fmt.Fprintf(&b, " **%.2f** |", k)
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString(" |\n")
	}
	return b.String()
}

// figures is how many decimals a figure of v's size is worth.
func figures(v float64) int {
	switch {
	case v >= 100:
		return 0
	case v >= 10:
		return 1
	}
	return 2
}

// exponent is the least-squares slope of log(y) against log(x): how the
// figure grows with the catalog (1 is linear).
func exponent(pts plotter.XYs) (float64, bool) {
	if len(pts) < 2 {
		return 0, false
	}
	var sx, sy, sxx, sxy float64
	for _, p := range pts {
		x, y := math.Log(p.X), math.Log(p.Y)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(pts))
	d := n*sxx - sx*sx
	if d == 0 {
		return 0, false
	}
	return (n*sxy - sx*sy) / d, true
}

func save(p *plot.Plot, w, h vg.Length, path string) error {
	img := vgimg.New(w, h)
	p.Draw(draw.New(img))
	return writePNG(img, path)
}

func writePNG(img *vgimg.Canvas, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// logTicks labels 1, 2 and 5 times each power of ten in range (gonum's
// LogTicks labels powers of ten only, which leaves a range inside one
// decade, such as memory, without a label).
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for k := math.Floor(math.Log10(lo)); k <= math.Ceil(math.Log10(hi)); k++ {
		for m := 1.0; m < 10; m++ {
			v := m * math.Pow(10, k)
			if v < lo || v > hi {
				continue
			}
			label := ""
			if m == 1 || m == 2 || m == 5 {
				label = strconv.FormatFloat(v, 'f', -1, 64)
			}
			ticks = append(ticks, plot.Tick{Value: v, Label: label})
		}
	}
	return ticks
}
