package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/tsdb"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The dashboard as Grafana lays it out: 24 columns, rows of 30 px.
const (
	gridCols  = 24
	pageWidth = 16 * vg.Inch
	rowUnit   = 0.34 * vg.Inch
	header    = 0.6 * vg.Inch
	// rateInterval stands for Grafana's $__rate_interval: four scrape
	// intervals of the recording (2 s), as Grafana computes it.
	rateInterval = "8s"
	step         = 2 * time.Second
)

type dashboard struct {
	Title  string      `json:"title"`
	Panels []dashPanel `json:"panels"`
}

type dashPanel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		X, Y, W, H int
	} `json:"gridPos"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit     string `json:"unit"`
			Decimals *int   `json:"decimals"`
			Mappings []struct {
				Options map[string]struct {
					Text  string `json:"text"`
					Color string `json:"color"`
				} `json:"options"`
			} `json:"mappings"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

// series is one query result line, named by its legend.
type series struct {
	name string
	pts  plotter.XYs // x: Unix seconds
}

// dashboardPicture evaluates every query of the dashboard with Prometheus's
// own engine over a recording of istiod's metrics (tests/cmd/metrics-recorder)
// and draws the panels where Grafana would, one row per registry.
func dashboardPicture(dashPath, scrapesPath, out string, clusters []string) error {
	b, err := os.ReadFile(dashPath)
	if err != nil {
		return err
	}
	d := &dashboard{}
	if err := json.Unmarshal(b, d); err != nil {
		return fmt.Errorf("%s: %w", dashPath, err)
	}
	dir, err := os.MkdirTemp("", "plots-tsdb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, start, end, err := loadScrapes(scrapesPath, dir)
	if err != nil {
		return err
	}
	defer db.Close()
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: time.Minute})

	rowHeight := 0
	for _, p := range d.Panels {
		rowHeight = max(rowHeight, p.GridPos.Y+p.GridPos.H)
	}
	height := header + vg.Length(rowHeight*len(clusters))*rowUnit
	img := vgimg.NewWith(vgimg.UseWH(pageWidth, height), vgimg.UseBackgroundColor(color.RGBA{0xf4, 0xf5, 0xf5, 255}))
	dc := draw.New(img)
	dc.FillText(textStyle(16, ink, draw.XLeft, draw.YTop), vg.Point{X: 0.15 * vg.Inch, Y: height - 0.12*vg.Inch}, d.Title)
	dc.FillText(textStyle(10, grey, draw.XLeft, draw.YTop), vg.Point{X: 0.15 * vg.Inch, Y: height - 0.4*vg.Inch},
		fmt.Sprintf("Consul registry: %s — %s to %s UTC, rendered offline by tests/plots from a recording of istiod's /metrics (tests/cmd/metrics-recorder)",
			strings.Join(clusters, ", "), start.UTC().Format("2006-01-02 15:04:05"), end.UTC().Format("15:04:05")))
	for k, cluster := range clusters {
		top := height - header - vg.Length(k*rowHeight)*rowUnit
		for _, p := range d.Panels {
			rect := vg.Rectangle{
				Min: vg.Point{X: vg.Length(p.GridPos.X) * pageWidth / gridCols, Y: top - vg.Length(p.GridPos.Y+p.GridPos.H)*rowUnit},
				Max: vg.Point{X: vg.Length(p.GridPos.X+p.GridPos.W) * pageWidth / gridCols, Y: top - vg.Length(p.GridPos.Y)*rowUnit},
			}
			var data []series
			for _, t := range p.Targets {
				expr := strings.NewReplacer("$cluster", cluster, "$__rate_interval", rateInterval).Replace(t.Expr)
				s, err := query(engine, db, expr, t.LegendFormat, start, end)
				if err != nil {
					return fmt.Errorf("panel %q: %s: %w", p.Title, expr, err)
				}
				data = append(data, s...)
			}
			if err := drawPanel(dc, rect, p, strings.ReplaceAll(p.Title, "$cluster", cluster), data); err != nil {
				return fmt.Errorf("panel %q: %w", p.Title, err)
			}
		}
	}
	return writePNG(img, out)
}

// loadScrapes reads the recording ("# scrape <unix ms>" then exposition
// lines) into a TSDB.
func loadScrapes(path, dir string) (*tsdb.DB, time.Time, time.Time, error) {
	var zero time.Time
	f, err := os.Open(path)
	if err != nil {
		return nil, zero, zero, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, zero, zero, err
	}
	db, err := tsdb.Open(dir, nil, nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		return nil, zero, zero, err
	}
	app := db.Appender(context.Background())
	var first, last int64
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if ms, ok := strings.CutPrefix(line, "# scrape "); ok {
			if last, err = strconv.ParseInt(ms, 10, 64); err != nil {
				return nil, zero, zero, fmt.Errorf("%s: %q: %w", path, line, err)
			}
			if first == 0 {
				first = last
			}
			continue
		}
		ls, v, err := parseSample(line)
		if err != nil {
			return nil, zero, zero, fmt.Errorf("%s: %w", path, err)
		}
		if _, err := app.Append(0, ls, last, v); err != nil {
			return nil, zero, zero, fmt.Errorf("%s: %q: %w", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, zero, zero, err
	}
	if err := app.Commit(); err != nil {
		return nil, zero, zero, err
	}
	if first == 0 {
		return nil, zero, zero, fmt.Errorf("%s: no scrape", path)
	}
	return db, time.UnixMilli(first), time.UnixMilli(last), nil
}

var (
	labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	// unfilled is a legend placeholder naming a label the series lacks
	// (Grafana leaves it empty).
	unfilled = regexp.MustCompile(`\{\{[^}]*\}\}`)
)

// parseSample reads one exposition line: name{labels} value.
func parseSample(line string) (labels.Labels, float64, error) {
	name, rest, _ := strings.Cut(line, "{")
	kv := []string{"__name__", name}
	if rest != "" {
		body, after, ok := strings.Cut(rest, "}")
		if !ok {
			return labels.EmptyLabels(), 0, fmt.Errorf("%q: unterminated labels", line)
		}
		for _, m := range labelPair.FindAllStringSubmatch(body, -1) {
			kv = append(kv, m[1], m[2])
		}
		rest = after
	} else {
		name, rest, _ = strings.Cut(line, " ")
		kv[1] = name
	}
	v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
	if err != nil {
		return labels.EmptyLabels(), 0, fmt.Errorf("%q: %w", line, err)
	}
	return labels.FromStrings(kv...), v, nil
}

func query(engine *promql.Engine, db *tsdb.DB, expr, legend string, start, end time.Time) ([]series, error) {
	q, err := engine.NewRangeQuery(context.Background(), db, nil, expr, start, end, step)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	res := q.Exec(context.Background())
	if res.Err != nil {
		return nil, res.Err
	}
	m, err := res.Matrix()
	if err != nil {
		return nil, err
	}
	var out []series
	for _, s := range m {
		name := legend
		s.Metric.Range(func(l labels.Label) { name = strings.ReplaceAll(name, "{{"+l.Name+"}}", l.Value) })
		name = unfilled.ReplaceAllString(name, "")
		var pts plotter.XYs
		for _, p := range s.Floats {
			if !math.IsNaN(p.F) && !math.IsInf(p.F, 0) {
				pts = append(pts, plotter.XY{X: float64(p.T) / 1000, Y: p.F})
			}
		}
		out = append(out, series{name: strings.TrimSpace(name), pts: pts})
	}
	slices.SortFunc(out, func(a, b series) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

var (
	ink     = color.RGBA{0x20, 0x22, 0x26, 255}
	grey    = color.RGBA{0x6e, 0x74, 0x7b, 255}
	palette = []color.RGBA{{0x73, 0xbf, 0x69, 255}, {0xf2, 0xcc, 0x0c, 255}, {0x56, 0x94, 0xf2, 255},
		{0xff, 0x78, 0x0a, 255}, {0xf2, 0x49, 0x5c, 255}, {0xb8, 0x77, 0xd9, 255}}
	named = map[string]color.RGBA{"green": {0x56, 0xa6, 0x4b, 255}, "red": {0xe0, 0x2f, 0x44, 255}}
)

func textStyle(size float64, c color.Color, x text.XAlignment, y text.YAlignment) draw.TextStyle {
	return draw.TextStyle{Color: c, Font: font.Font{Typeface: "Liberation", Variant: "Sans", Size: vg.Points(size)},
		XAlign: x, YAlign: y, Handler: plot.DefaultTextHandler}
}

func drawPanel(dc draw.Canvas, r vg.Rectangle, p dashPanel, title string, data []series) error {
	pad := vg.Points(3)
	inner := vg.Rectangle{Min: vg.Point{X: r.Min.X + pad, Y: r.Min.Y + pad}, Max: vg.Point{X: r.Max.X - pad, Y: r.Max.Y - pad}}
	if p.Type == "row" {
		dc.FillText(textStyle(13, ink, draw.XLeft, draw.YCenter), vg.Point{X: inner.Min.X + pad, Y: (inner.Min.Y + inner.Max.Y) / 2}, title)
		return nil
	}
	box := []vg.Point{inner.Min, {X: inner.Max.X, Y: inner.Min.Y}, inner.Max, {X: inner.Min.X, Y: inner.Max.Y}}
	dc.FillPolygon(color.White, box)
	dc.StrokeLines(draw.LineStyle{Color: color.RGBA{0xd8, 0xd9, 0xda, 255}, Width: vg.Points(0.7)}, append(box, box[0]))
	dc.FillText(textStyle(9.5, ink, draw.XLeft, draw.YTop), vg.Point{X: inner.Min.X + 2*pad, Y: inner.Max.Y - 2*pad}, title)
	body := vg.Rectangle{Min: vg.Point{X: inner.Min.X + pad, Y: inner.Min.Y + pad}, Max: vg.Point{X: inner.Max.X - pad, Y: inner.Max.Y - 6*pad}}
	switch p.Type {
	case "stat":
		drawStat(dc, body, p, data)
		return nil
	case "heatmap":
		return drawHeatmap(dc, body, data)
	default:
		return drawTimeseries(dc, body, p, data)
	}
}

// drawStat shows each series' last value, mapped or formatted by unit.
func drawStat(dc draw.Canvas, r vg.Rectangle, p dashPanel, data []series) {
	if len(data) == 0 {
		dc.FillText(textStyle(14, grey, draw.XCenter, draw.YCenter), vg.Point{X: (r.Min.X + r.Max.X) / 2, Y: (r.Min.Y + r.Max.Y) / 2}, "No data")
		return
	}
	h := (r.Max.Y - r.Min.Y) / vg.Length(len(data))
	for i, s := range data {
		cell := vg.Rectangle{Min: vg.Point{X: r.Min.X, Y: r.Max.Y - vg.Length(i+1)*h}, Max: vg.Point{X: r.Max.X, Y: r.Max.Y - vg.Length(i)*h}}
		v := math.NaN()
		if len(s.pts) > 0 {
			v = s.pts[len(s.pts)-1].Y
		}
		txt, fill := formatValue(p, v), color.Color(nil)
		for _, m := range p.FieldConfig.Defaults.Mappings {
			if o, ok := m.Options[strconv.FormatFloat(v, 'f', -1, 64)]; ok {
				txt, fill = o.Text, named[o.Color]
			}
		}
		fg := color.Color(ink)
		if fill != nil {
			dc.FillPolygon(fill, []vg.Point{cell.Min, {X: cell.Max.X, Y: cell.Min.Y}, cell.Max, {X: cell.Min.X, Y: cell.Max.Y}})
			fg = color.White
		}
		if s.name != "" {
			txt = s.name + ": " + txt
		}
		dc.FillText(textStyle(min(20, float64(h)/2.2), fg, draw.XCenter, draw.YCenter), vg.Point{X: (cell.Min.X + cell.Max.X) / 2, Y: (cell.Min.Y + cell.Max.Y) / 2}, txt)
	}
}

func formatValue(p dashPanel, v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	dec := 2
	if d := p.FieldConfig.Defaults.Decimals; d != nil {
		dec = *d
	}
	switch p.FieldConfig.Defaults.Unit {
	case "s":
		return strconv.FormatFloat(v, 'f', dec, 64) + " s"
	case "percentunit":
		return strconv.FormatFloat(100*v, 'f', dec, 64) + "%"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func drawTimeseries(dc draw.Canvas, r vg.Rectangle, p dashPanel, data []series) error {
	pl := plot.New()
	pl.BackgroundColor = color.Transparent
	pl.X.Tick.Marker = plot.TimeTicks{Format: "15:04:05"}
	pl.Legend.Top, pl.Legend.Left = true, true
	pl.Legend.TextStyle.Font.Size = vg.Points(7)
	pl.Legend.ThumbnailWidth = vg.Points(12)
	pl.X.Tick.Label.Font.Size = vg.Points(7)
	pl.Y.Tick.Label.Font.Size = vg.Points(7)
	pl.Add(plotter.NewGrid())
	if u := p.FieldConfig.Defaults.Unit; u != "" && u != "none" {
		pl.Y.Label.Text = u
		pl.Y.Label.TextStyle = textStyle(7, grey, draw.XCenter, draw.YCenter)
	}
	for i, s := range data {
		if len(s.pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.pts)
		if err != nil {
			return err
		}
		l.Color, l.Width = palette[i%len(palette)], vg.Points(1.2)
		pl.Add(l)
		name := s.name
		if name == "" {
			name = "value"
		}
		pl.Legend.Add(name, l)
	}
	// Grafana's y axis starts at zero for these panels and shows a flat
	// zero line as such, not centred.
	pl.Y.Min = 0
	pl.Y.Max = max(pl.Y.Max, 1e-9)
	if pl.Y.Max <= 1e-9 {
		pl.Y.Max = 1
	}
	pl.Draw(draw.Canvas{Canvas: dc.Canvas, Rectangle: r})
	return nil
}

// drawHeatmap draws each latency bucket's pushes per step (the dashboard's
// heatmap reads the increase of each le bucket).
func drawHeatmap(dc draw.Canvas, r vg.Rectangle, data []series) error {
	var buckets []series
	for _, s := range data {
		if s.name != "+Inf" && len(s.pts) > 0 {
			buckets = append(buckets, s)
		}
	}
	if len(buckets) == 0 {
		return nil
	}
	slices.SortFunc(buckets, func(a, b series) int {
		x, _ := strconv.ParseFloat(a.name, 64)
		y, _ := strconv.ParseFloat(b.name, 64)
		return int(math.Copysign(1, x-y))
	})
	// Bucket counts are cumulative: what falls in (previous le, le].
	g := grid{xs: nil, ys: nil}
	for _, p := range buckets[0].pts {
		g.xs = append(g.xs, p.X)
	}
	for i, b := range buckets {
		g.ys = append(g.ys, float64(i))
		row := make([]float64, len(g.xs))
		for j := range g.xs {
			if j < len(b.pts) {
				row[j] = b.pts[j].Y
				if i > 0 && j < len(buckets[i-1].pts) {
					row[j] -= buckets[i-1].pts[j].Y
				}
			}
		}
		g.z = append(g.z, row)
	}
	pl := plot.New()
	pl.BackgroundColor = color.Transparent
	pl.X.Tick.Marker = plot.TimeTicks{Format: "15:04:05"}
	pl.X.Tick.Label.Font.Size = vg.Points(7)
	pl.Y.Tick.Label.Font.Size = vg.Points(7)
	var ticks []plot.Tick
	for i, b := range buckets {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: "≤ " + b.name + " s"})
	}
	pl.Y.Tick.Marker = plot.ConstantTicks(ticks)
	top := 0.0
	for _, row := range g.z {
		top = max(top, slices.Max(row))
	}
	if top <= 0 {
		return nil // no push in the window: an empty panel, as Grafana shows it
	}
	h := plotter.NewHeatMap(g, blues{})
	h.Underflow, h.Overflow = color.White, color.RGBA{0x08, 0x30, 0x6b, 255}
	pl.Add(h)
	pl.Draw(draw.Canvas{Canvas: dc.Canvas, Rectangle: r})
	return nil
}

// grid is a heatmap's cells: z[y][x].
type grid struct {
	xs, ys []float64
	z      [][]float64
}

func (g grid) Dims() (c, r int)   { return len(g.xs), len(g.ys) }
func (g grid) Z(c, r int) float64 { return g.z[r][c] }
func (g grid) X(c int) float64    { return g.xs[c] }
func (g grid) Y(r int) float64    { return g.ys[r] }

// blues is a white-to-blue palette, Grafana's "Blues".
type blues struct{}

func (blues) Colors() []color.Color {
	var out []color.Color
	for i := range 9 {
		f := float64(i) / 8
		out = append(out, color.RGBA{uint8(247 - f*239), uint8(251 - f*203), uint8(255 - f*148), 255})
	}
	return out
}
