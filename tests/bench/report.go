package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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

// Write stores the JSON, the markdown table and the latency plot in dir.
func (r *Report) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"bench.json": js, "bench.md": []byte(r.Markdown())}
	png, err := PlotCDF(r.Results)
	if err != nil {
		return nil, fmt.Errorf("plot: %w", err)
	}
	files["latency-cdf.png"] = png
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

// Markdown is the side-by-side table: each metric for Route A, Route B and
// the A/B ratio (below 1 means Route A uses less / is faster).
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
	b.WriteString("| scale | metric | Route A (Consul registry) | Route B (SE+WE) | A/B |\n|---|---|---:|---:|---:|\n")
	for _, pair := range pairs(r.Results) {
		a, bb := pair[0], pair[1]
		scale := fmt.Sprintf("%d×%d", a.Services, a.PerSvc)
		row := func(metric string, va, vb float64, format string) {
			cell := func(v float64, synced bool) string {
				if !synced {
					return "– (never synced)"
				}
				return fmt.Sprintf(format, v)
			}
			ratio := "–"
			if vb != 0 && a.Synced && bb.Synced {
				ratio = fmt.Sprintf("%.2f", va/vb)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", scale, metric, cell(va, a.Synced), cell(vb, bb.Synced), ratio)
		}
		syncA, syncB := fmt.Sprintf("%.2f s", a.SyncSeconds), fmt.Sprintf("%.2f s", bb.SyncSeconds)
		if !a.Synced {
			syncA = "> " + syncA
		}
		if !bb.Synced {
			syncB = "> " + syncB
		}
		fmt.Fprintf(&b, "| %s | initial sync | %s | %s | %.2f |\n", scale, syncA, syncB, a.SyncSeconds/bb.SyncSeconds)
		if a.SettleSeconds+bb.SettleSeconds > 0 { // not recorded before the warm-up existed
			settle := func(r Result) string {
				if !r.Settled {
					return fmt.Sprintf("> %.2f s (not every xDS watcher)", r.SettleSeconds)
				}
				return fmt.Sprintf("%.2f s", r.SettleSeconds)
			}
			ratio := "–"
			if a.Settled && bb.Settled {
				ratio = fmt.Sprintf("%.2f", a.SettleSeconds/bb.SettleSeconds)
			}
			fmt.Fprintf(&b, "| %s | settled after sync (warm-up flip out and back, xDS) | %s | %s | %s |\n", scale, settle(a), settle(bb), ratio)
		}
		row("change→client p50 (ms)", a.Latency.P50, bb.Latency.P50, "%.1f")
		row("change→client p90 (ms)", a.Latency.P90, bb.Latency.P90, "%.1f")
		row("change→client p99 (ms)", a.Latency.P99, bb.Latency.P99, "%.1f")
		row("change→client max (ms)", a.Latency.Max, bb.Latency.Max, "%.1f")
		if a.SidecarLat.Count+bb.SidecarLat.Count > 0 { // not recorded before per-kind stats existed
			row("change→sidecar-like p99 (ms)", a.SidecarLat.P99, bb.SidecarLat.P99, "%.1f")
			row("change→proxyless p99 (ms)", a.ProxylessLat.P99, bb.ProxylessLat.P99, "%.1f")
		}
		if a.WDSLat.Count+bb.WDSLat.Count > 0 { // ambient runs only
			wds := func(st Stats, p float64) string {
				if st.Count == 0 {
					return "never"
				}
				return fmt.Sprintf("%.1f", p)
			}
			for _, q := range []struct {
				name string
				a, b float64
			}{{"p50", a.WDSLat.P50, bb.WDSLat.P50}, {"p99", a.WDSLat.P99, bb.WDSLat.P99}} {
				ratio := ""
				if a.WDSLat.Count > 0 && bb.WDSLat.Count > 0 {
					ratio = fmt.Sprintf("%.2f", q.a/q.b)
				}
				fmt.Fprintf(&b, "| %s | change→WDS (ztunnel-like) %s (ms) | %s | %s | %s |\n", scale, q.name,
					wds(a.WDSLat, q.a), wds(bb.WDSLat, q.b), ratio)
			}
			fmt.Fprintf(&b, "| %s | changes seen over WDS | %d of %d | %d of %d | |\n", scale,
				a.WDSLat.Count, a.Changes, bb.WDSLat.Count, bb.Changes)
		}
		row("istiod CPU, sync (s)", a.CPUSyncSec, bb.CPUSyncSec, "%.1f")
		row("istiod CPU, churn (s)", a.CPUChurnSec, bb.CPUChurnSec, "%.1f")
		// Peak RSS is measured either way (a lower bound for a route that never synced).
		fmt.Fprintf(&b, "| %s | istiod peak RSS (MiB) | %.0f | %.0f | %.2f |\n", scale,
			float64(a.PeakRSSBytes)/(1<<20), float64(bb.PeakRSSBytes)/(1<<20), float64(a.PeakRSSBytes)/float64(max(bb.PeakRSSBytes, 1)))
		row("full pushes in churn", a.FullPushes, bb.FullPushes, "%.0f")
		row("CDS pushes in churn (per client)", a.CDSPushes, bb.CDSPushes, "%.0f")
		row("EDS pushes in churn (per client)", a.EDSPushes, bb.EDSPushes, "%.0f")
		fmt.Fprintf(&b, "| %s | changes (unseen pairs) | %d (%d) | %d (%d) | |\n", scale, a.Changes, a.Unseen, bb.Changes, bb.Unseen)
		fmt.Fprintf(&b, "| %s | Consul requests per change; peak connections | %.2f; %d | – | |\n", scale, a.ConsulPerChg, a.ConsulPeak)
	}
	return b.String()
}

// pairs groups results as (Route A, Route B) per scale, in run order.
func pairs(rs []Result) [][2]Result {
	var out [][2]Result
	for i := 0; i+1 < len(rs); i += 2 {
		if rs[i].Route == RouteA && rs[i+1].Route == RouteB {
			out = append(out, [2]Result{rs[i], rs[i+1]})
		}
	}
	return out
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
