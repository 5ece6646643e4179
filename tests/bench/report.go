package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Report is one `make bench` run.
type Report struct {
	When    time.Time `json:"when"`
	Machine string    `json:"machine"`
	Istiod  string    `json:"istiod"`
	Config  struct {
		Watchers int     `json:"watchers"`
		Rate     float64 `json:"flips_per_second"`
		Churn    string  `json:"churn"`
		Kind     string  `json:"churn_kind,omitempty"` // "" is health flips (runs before registrations existed)
		Ambient  bool    `json:"ambient,omitempty"`
	} `json:"config"`
	Results []Result `json:"results"`
}

// Machine describes where the benchmark ran.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
		}
	}
	return fmt.Sprintf("%d × %s%s, %s/%s, %s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// Write stores the JSON and the markdown table in dir (tests/plots draws
// the pictures from the JSON: make bench runs it).
func (r *Report) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"bench.json": js, "bench.md": []byte(r.Markdown())}
	var written []string
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return nil, err
		}
		written = append(written, p)
	}
	return written, nil
}

// Markdown is the side-by-side table: each metric for every route measured,
// then Route A's ratio to each other route (below 1: Route A uses less or
// is faster).
func (r *Report) Markdown() string {
	var b strings.Builder
	ambient := ""
	if r.Config.Ambient {
		ambient = " and, ambient mode on, 1 WDS watcher subscribed as ztunnel"
	}
	kind := "health flips"
	if r.Config.Kind == ChurnRegister {
		kind = "deregistrations and registrations"
	}
	fmt.Fprintf(&b, "Measured %s on %s; istiod %s; %d xDS watchers (half sidecar-like, half proxyless gRPC)%s; churn %.0f %s/s for %s.\n\n",
		r.When.UTC().Format("2006-01-02"), r.Machine, r.Istiod, r.Config.Watchers, ambient, r.Config.Rate, kind, r.Config.Churn)
	cols := measured(r.Results)
	// The ratio columns: A against each other route (A runs, and so
	// comes, first).
	var others []string
	if slices.Contains(cols, RouteA) {
		// Not P: its figures are Consul's and a watcher's, not a client's.
		others = slices.DeleteFunc(slices.Clone(cols[1:]), func(c string) bool { return c == RouteP })
	}
	b.WriteString("| scale | metric |")
	for _, c := range cols {
		fmt.Fprintf(&b, " Route %s |", routeTitles[c])
	}
	for _, o := range others {
		fmt.Fprintf(&b, " A/%s |", o[:1])
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(cols)+len(others)) + "\n")
	for _, sc := range byScale(r.Results) {
		label := fmt.Sprintf("%d×%d", sc.services, sc.perSvc)
		if sc.istiods > 1 {
			label += fmt.Sprintf(", %d istiods", sc.istiods)
		}
		if sc.release != "" {
			label += ", Istio " + sc.release
		}
		t := table{b: &b, scale: label, cols: cols, others: others, at: sc.routes}
		t.writeRows()
	}
	writeAcrossReleases(&b, r.Results)
	return b.String()
}

// releaseRatios are the figures compared across releases: below 1 the
// first release measured is faster or uses less.
var releaseRatios = []struct {
	metric string
	value  func(Result) (float64, bool)
}{
	{"initial sync", func(r Result) (float64, bool) { return r.SyncSeconds, r.Synced }},
	{"settled after sync", func(r Result) (float64, bool) { return r.SettleSeconds, r.Settled }},
	{"change→client p50", func(r Result) (float64, bool) { return r.Latency.P50, r.Synced }},
	{"change→client p99", func(r Result) (float64, bool) { return r.Latency.P99, r.Synced }},
	{"istiod CPU, sync", func(r Result) (float64, bool) { return r.CPUSyncSec, r.Synced }},
	{"istiod CPU, churn", func(r Result) (float64, bool) { return r.CPUChurnSec, r.Synced }},
	{"istiod peak RSS", func(r Result) (float64, bool) { return float64(r.PeakRSSBytes), r.PeakRSSBytes > 0 }},
}

// writeAcrossReleases adds, for a run over several Istio releases, each
// route's figures on the first release as a ratio to the same route on
// each later one, scale by scale: a regression across an upgrade shows as
// a ratio, as A/K does across routes.
func writeAcrossReleases(b *strings.Builder, rs []Result) {
	var releases []string
	for _, r := range rs {
		if r.Release != "" && !slices.Contains(releases, r.Release) {
			releases = append(releases, r.Release)
		}
	}
	if len(releases) < 2 {
		return
	}
	type key struct {
		services, perSvc int
		route, release   string
	}
	at := map[key]Result{}
	var order []key // scale and route, first release
	for _, r := range rs {
		k := key{r.Services, r.PerSvc, r.Route, r.Release}
		at[k] = r
		if r.Release == releases[0] {
			order = append(order, k)
		}
	}
	fmt.Fprintf(b, "\nAcross releases: Istio %s over each later one, same route and scale (below 1: %s is faster or uses less).\n\n", releases[0], releases[0])
	b.WriteString("| scale | route | metric |")
	for _, rel := range releases[1:] {
		fmt.Fprintf(b, " %s/%s |", releases[0], rel)
	}
	b.WriteString("\n|---|---|---|" + strings.Repeat("---:|", len(releases)-1) + "\n")
	for _, k := range order {
		first := at[k]
		for _, m := range releaseRatios {
			fmt.Fprintf(b, "| %d×%d | %s | %s |", k.services, k.perSvc, k.route, m.metric)
			v0, ok0 := m.value(first)
			for _, rel := range releases[1:] {
				other, ok := at[key{k.services, k.perSvc, k.route, rel}]
				v1, ok1 := m.value(other)
				if !ok || !ok0 || !ok1 || v1 == 0 {
					b.WriteString(" – |")
					continue
				}
				fmt.Fprintf(b, " %.2f |", v0/v1)
			}
			b.WriteString("\n")
		}
	}
}

// routeTitles head the table's columns.
var routeTitles = map[string]string{
	RouteA: "A (Consul registry)", RouteK: "K (Kubernetes Services)", RouteC: "C (MCP, istiod as shipped)",
	RouteE: "E (MCP, inline endpoints)", RouteB: "B (SE+WE)",
	RouteP: "P (per-service blocking queries, no istiod)",
}

// measured lists the routes present in rs, in run order.
func measured(rs []Result) []string {
	var out []string
	for _, route := range routes {
		if slices.ContainsFunc(rs, func(r Result) bool { return r.Route == route }) {
			out = append(out, route)
		}
	}
	return out
}

// scale is one dataset size's results, by route.
type scale struct {
	services, perSvc, istiods int
	release                   string // "" unless the run measured several
	routes                    map[string]Result
}

// byScale groups results by dataset size, in run order.
func byScale(rs []Result) []scale {
	var out []scale
	for _, r := range rs {
		if n := len(out); n == 0 || out[n-1].services != r.Services || out[n-1].perSvc != r.PerSvc || out[n-1].release != r.Release ||
			(r.Route == RouteA && out[n-1].istiods != max(r.Istiods, 1)) || hasRoute(out[n-1], r.Route) {
			out = append(out, scale{services: r.Services, perSvc: r.PerSvc, istiods: max(r.Istiods, 1), release: r.Release, routes: map[string]Result{}})
		}
		out[len(out)-1].routes[r.Route] = r
	}
	return out
}

func hasRoute(s scale, route string) bool { _, ok := s.routes[route]; return ok }

// table writes one scale's rows.
type table struct {
	b      *strings.Builder
	scale  string
	cols   []string
	others []string
	at     map[string]Result
}

// row writes one metric: a cell per route, then A's ratio to each other
// route when both values mean something (value's bool). A value that is
// only a lower bound (a route that never synced) makes the ratio a bound.
func (t table) row(metric string, cell func(Result) string, value func(Result) (float64, bool)) {
	fmt.Fprintf(t.b, "| %s | %s |", t.scale, metric)
	for _, c := range t.cols {
		r, ok := t.at[c]
		if !ok {
			t.b.WriteString(" – |")
			continue
		}
		fmt.Fprintf(t.b, " %s |", cell(r))
	}
	for _, o := range t.others {
		fmt.Fprintf(t.b, " %s |", t.ratio(o, value))
	}
	t.b.WriteString("\n")
}

func (t table) ratio(other string, value func(Result) (float64, bool)) string {
	a, okA := t.at[RouteA]
	x, okX := t.at[other]
	if value == nil || !okA || !okX {
		return ""
	}
	va, goodA := value(a)
	vx, goodX := value(x)
	switch {
	case vx == 0:
		return ""
	case goodA && goodX:
		return fmt.Sprintf("%.2f", va/vx)
	case goodA && !x.Synced && x.SyncSeconds > 0 && vx == x.SyncSeconds:
		return fmt.Sprintf("< %.2f", va/vx) // the other's figure is a lower bound
	}
	return ""
}

// number is a row of one figure per route, meaningful once the route synced.
func (t table) number(metric, format string, f func(Result) float64) {
	t.row(metric, func(r Result) string {
		if !r.Synced {
			return "– (never synced)"
		}
		return fmt.Sprintf(format, f(r))
	}, func(r Result) (float64, bool) { return f(r), r.Synced })
}

// istiodNumber is a number about istiod: none on Route P, which runs none.
func (t table) istiodNumber(metric, format string, f func(Result) float64) {
	t.row(metric, func(r Result) string {
		switch {
		case r.Route == RouteP:
			return "–"
		case !r.Synced:
			return "– (never synced)"
		}
		return fmt.Sprintf(format, f(r))
	}, func(r Result) (float64, bool) { return f(r), r.Synced && r.Route != RouteP })
}

// readsConsul: the routes whose Consul use is measured.
func readsConsul(r Result) bool {
	return r.Route == RouteA || r.Route == RouteC || r.Route == RouteE || r.Route == RouteP
}

// any reports whether f holds for some route at this scale.
func (t table) any(f func(Result) bool) bool {
	for _, r := range t.at {
		if f(r) {
			return true
		}
	}
	return false
}

func (t table) writeRows() {
	t.row("initial sync", func(r Result) string {
		if !r.Synced {
			return fmt.Sprintf("> %.2f s", r.SyncSeconds)
		}
		return fmt.Sprintf("%.2f s", r.SyncSeconds)
	}, func(r Result) (float64, bool) { return r.SyncSeconds, r.Synced })
	if t.any(func(r Result) bool { return r.SettleSeconds > 0 }) { // not recorded before the warm-up existed
		t.row("settled after sync (warm-up flip out and back, xDS)", func(r Result) string {
			if !r.Synced {
				return "– (never synced)"
			}
			if !r.Settled {
				return fmt.Sprintf("> %.2f s (not every xDS watcher)", r.SettleSeconds)
			}
			return fmt.Sprintf("%.2f s", r.SettleSeconds)
		}, func(r Result) (float64, bool) { return r.SettleSeconds, r.Settled })
	}
	t.number("change→client p50 (ms)", "%.1f", func(r Result) float64 { return r.Latency.P50 })
	t.number("change→client p90 (ms)", "%.1f", func(r Result) float64 { return r.Latency.P90 })
	t.number("change→client p99 (ms)", "%.1f", func(r Result) float64 { return r.Latency.P99 })
	t.number("change→client max (ms)", "%.1f", func(r Result) float64 { return r.Latency.Max })
	if t.any(func(r Result) bool { return r.SidecarLat.Count > 0 }) { // not recorded before per-kind stats existed
		t.istiodNumber("change→sidecar-like p99 (ms)", "%.1f", func(r Result) float64 { return r.SidecarLat.P99 })
		t.istiodNumber("change→proxyless p99 (ms)", "%.1f", func(r Result) float64 { return r.ProxylessLat.P99 })
	}
	if t.any(func(r Result) bool { return r.WDSLat.Count > 0 }) { // ambient runs only
		for _, q := range []struct {
			name string
			f    func(Stats) float64
		}{{"p50", func(s Stats) float64 { return s.P50 }}, {"p99", func(s Stats) float64 { return s.P99 }}} {
			t.row("change→WDS (ztunnel-like) "+q.name+" (ms)", func(r Result) string {
				if r.WDSLat.Count == 0 {
					return "never"
				}
				return fmt.Sprintf("%.1f", q.f(r.WDSLat))
			}, func(r Result) (float64, bool) { return q.f(r.WDSLat), r.WDSLat.Count > 0 })
		}
		t.row("changes seen over WDS", func(r Result) string {
			return fmt.Sprintf("%d of %d", r.WDSLat.Count, r.Changes)
		}, nil)
	}
	t.istiodNumber("istiod CPU, sync (s)", "%.1f", func(r Result) float64 { return r.CPUSyncSec })
	t.istiodNumber("istiod CPU, churn (s)", "%.1f", func(r Result) float64 { return r.CPUChurnSec })
	// Peak RSS is measured either way (a lower bound for a route that never synced).
	t.row("istiod peak RSS (MiB)", func(r Result) string {
		if r.Route == RouteP {
			return "–"
		}
		return fmt.Sprintf("%.0f", float64(r.PeakRSSBytes)/(1<<20))
	},
		func(r Result) (float64, bool) { return float64(r.PeakRSSBytes), r.PeakRSSBytes > 0 })
	t.istiodNumber("full pushes in churn", "%.0f", func(r Result) float64 { return r.FullPushes })
	t.istiodNumber("CDS pushes in churn (per client)", "%.0f", func(r Result) float64 { return r.CDSPushes })
	t.istiodNumber("EDS pushes in churn (per client)", "%.0f", func(r Result) float64 { return r.EDSPushes })
	t.row("changes (unseen pairs)", func(r Result) string { return fmt.Sprintf("%d (%d)", r.Changes, r.Unseen) }, nil)
	consul := func(f func(Result) string) func(Result) string {
		return func(r Result) string {
			switch {
			case !readsConsul(r):
				return "–"
			case !r.Synced:
				return "– (never synced)"
			}
			return f(r)
		}
	}
	t.row("Consul requests per change; peak connections", consul(func(r Result) string {
		return fmt.Sprintf("%.2f; %d", r.ConsulPerChg, r.ConsulPeak)
	}), nil)
	if t.any(func(r Result) bool { return r.ConsulPeakRSSBytes > 0 }) { // not recorded before the Consul rows existed
		t.row("Consul response bytes per change", consul(func(r Result) string { return fmt.Sprintf("%.0f", r.ConsulBytesPerChg) }), nil)
		t.row("Consul CPU per change (ms)", consul(func(r Result) string { return fmt.Sprintf("%.2f", r.ConsulCPUPerChgMs) }), nil)
		if t.any(func(r Result) bool { _, ok := r.NetCPUPerChangeMs(); return ok }) {
			t.row("Consul CPU per change, net of idle (ms)", consul(func(r Result) string {
				if v, ok := r.NetCPUPerChangeMs(); ok {
					return fmt.Sprintf("%.2f", v)
				}
				return "–"
			}), nil)
		}
		t.row("Consul peak RSS (MiB)", consul(func(r Result) string {
			return fmt.Sprintf("%.0f", float64(r.ConsulPeakRSSBytes)/(1<<20))
		}), nil)
	}
	if t.any(func(r Result) bool { return r.ConsulIdle.Seconds > 0 }) {
		t.row("Consul idle: requests/s; bytes/s; CPU ms/s", consul(func(r Result) string {
			u := r.ConsulIdle
			return fmt.Sprintf("%.2f; %.0f; %.1f", u.PerSecond(float64(u.Requests)), u.PerSecond(float64(u.Bytes)), u.PerSecond(u.CPUSeconds*1000))
		}), nil)
	}
	if t.any(func(r Result) bool { return len(r.ReplicaP99) > 0 }) {
		t.row("change→client p99 per replica (ms)", func(r Result) string {
			if len(r.ReplicaP99) == 0 {
				return "–"
			}
			var ps []string
			for _, p := range r.ReplicaP99 {
				ps = append(ps, fmt.Sprintf("%.0f", p))
			}
			return strings.Join(ps, " · ")
		}, nil)
	}
	if t.any(func(r Result) bool { return r.MCPPeakRSSBytes > 0 }) { // Route C's server
		mcp := func(f func(Result) string) func(Result) string {
			return func(r Result) string {
				if r.Route != RouteC && r.Route != RouteE {
					return "–"
				}
				return f(r)
			}
		}
		synced := func(f func(Result) string) func(Result) string {
			return func(r Result) string {
				if !r.Synced {
					return "– (never synced)"
				}
				return f(r)
			}
		}
		t.row("consul-mcp CPU, sync; churn (s)", mcp(synced(func(r Result) string {
			return fmt.Sprintf("%.1f; %.1f", r.MCPCPUSyncSec, r.MCPCPUChurnSec)
		})), nil)
		t.row("consul-mcp peak RSS (MiB)", mcp(func(r Result) string {
			return fmt.Sprintf("%.0f", float64(r.MCPPeakRSSBytes)/(1<<20))
		}), nil)
		t.row("MCP stream bytes per change (per istiod)", mcp(synced(func(r Result) string {
			return fmt.Sprintf("%.0f", r.MCPBytesPerChg)
		})), nil)
	}
}

// Merge combines reports (scales measured in separate runs) into one; the
// first report's machine and settings head it, each run's date is kept.
func Merge(paths []string) (*Report, error) {
	var out *Report
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		r := &Report{}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if out == nil {
			out = r
			continue
		}
		if r.Machine != out.Machine || r.Config != out.Config {
			return nil, fmt.Errorf("%s: measured on another machine or with other settings", p)
		}
		out.Results = append(out.Results, r.Results...)
	}
	if out == nil {
		return nil, fmt.Errorf("nothing to merge")
	}
	return out, nil
}
