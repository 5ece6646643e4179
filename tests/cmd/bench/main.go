// Command bench measures the patched istiod serving one catalog through our
// Consul registry (Route A), as Kubernetes Services and EndpointSlices read
// by istiod's own Kubernetes registry (Route K, the reference) and as
// ServiceEntry + WorkloadEntry objects (Route B, what SE-writing bridges
// produce), on the same data, machine and istiod binary, and the release's
// istiod as shipped reading the same Consul through consul-mcp (Route C,
// MCP-over-xDS), in one run. `make bench`.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pilot-consul/pilot-consul/tests/bench"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

func main() {
	scales := flag.String("scales", "100,1000,10000", "comma-separated service counts N")
	perSvc := flag.Int("instances", 10, "instances per service M")
	watchers := flag.Int("watchers", 4, "xDS clients (even: sidecar-like, odd: proxyless gRPC)")
	// Below 10/s: istiod pushes once changes pause for PILOT_DEBOUNCE_AFTER
	// (100 ms), so a steadier stream waits for PILOT_DEBOUNCE_MAX (10 s).
	rate := flag.Float64("rate", 5, "changes per second during churn")
	kind := flag.String("churn-kind", bench.ChurnHealth, "what churn changes: health (flips) or register (deregistrations and registrations)")
	churn := flag.Duration("churn", 30*time.Second, "how long churn runs per route and scale")
	syncTimeout := flag.Duration("sync-timeout", 15*time.Minute, "how long istiod may take to serve everything")
	profile := flag.Bool("profile", false, "save pprof profiles into the output dir's profiles/ (make bench draws their flame graphs): istiod's CPU at start-up and in churn, its heap once synced, Consul's CPU in churn (Routes A, C)")
	routes := flag.String("routes", "A,K,C,B", "routes to measure: A (Consul registry), K (Kubernetes Services), C (consul-mcp + istiod as shipped), E (C with --inlineEndpoints), B (ServiceEntry+WorkloadEntry), P (no istiod: one blocking query per service, as peers' watchers hold them)")
	istiods := flag.String("istiods", "1", "comma-separated istiod replica counts for Route A on one Consul; each count is a run of its own (the other routes run with the first)")
	consulHTTPS := flag.Bool("consul-https", false, "Route A reads Consul over HTTPS (through a TLS-terminating counting proxy): HTTP/2 carries its per-service watches")
	consulMaxConns := flag.Int("consul-max-conns", 0, "Route A's Consul limits.http_max_conns_per_client (0: Consul's default, 200); with -consul-args=--consulMaxConnections=N, a watch per service over plain HTTP")
	consulArgs := flag.String("consul-args", "", "space-separated flags added to Route A's istiod (e.g. --consulMaxConcurrentRequests=32)")
	idle := flag.Duration("idle", 0, "quiet window after the warm-up in which Consul's idle load is measured (A, C, P)")
	ambient := flag.Bool("ambient", false, "run istiod in ambient mode and add a WDS watcher subscribed as ztunnel")
	releases := flag.String("releases", "", "comma-separated Istio releases to measure in turn, each with its own istiod build (out/<release>, built when missing); "+
		"the report compares them route by route. Empty: the release make builds (ISTIO)")
	out := flag.String("out", "results", "directory for bench.json and bench.md (make bench then draws the pictures with tests/plots)")
	merge := flag.String("merge", "", "comma-separated bench.json files to combine into one report in -out (no run)")
	flag.Parse()
	if *merge != "" {
		rep, err := bench.Merge(strings.Split(*merge, ","))
		if err != nil {
			fail(err)
		}
		files, err := rep.Write(*out)
		if err != nil {
			fail(err)
		}
		fmt.Print(rep.Markdown())
		fmt.Printf("\nwrote %s\n", strings.Join(files, ", "))
		return
	}

	ns := counts("scales", *scales, "a service count")
	if *kind != bench.ChurnHealth && *kind != bench.ChurnRegister {
		fail(fmt.Errorf("-churn-kind=%q: want %s or %s", *kind, bench.ChurnHealth, bench.ChurnRegister))
	}
	ks := counts("istiods", *istiods, "a replica count")
	only, err := bench.ParseRoutes(*routes)
	if err != nil {
		fail(fmt.Errorf("-routes: %w", err))
	}
	env, err := harness.NewProcessEnv("pilot-consul-bench")
	if err != nil {
		fail(err)
	}
	defer env.Close()
	env.Quiet = true

	rep := &bench.Report{When: time.Now(), Machine: bench.Machine(), Istiod: istiodVersion()}
	rep.Config.Watchers, rep.Config.Rate, rep.Config.Churn, rep.Config.Ambient = *watchers, *rate, churn.String(), *ambient
	if *kind == bench.ChurnRegister {
		rep.Config.Kind = *kind
	}
	cfg := bench.Config{Watchers: *watchers, Rate: *rate, Churn: *churn, SyncTimeout: *syncTimeout, Kind: *kind,
		ProfileDir: map[bool]string{true: filepath.Join(*out, "profiles")}[*profile], Routes: only, Ambient: *ambient, Idle: *idle, ConsulArgs: strings.Fields(*consulArgs), ConsulMaxConns: *consulMaxConns, ConsulHTTPS: *consulHTTPS,
		Step: func(format string, args ...any) {
			fmt.Printf("%s ==> %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		}}
	rels := []string{""} // the release harness picks (ISTIO, else VERSION's default)
	if *releases != "" {
		rels = strings.Split(*releases, ",")
		var versions []string
		for _, rel := range rels {
			// harness finds istiod by $ISTIO (out/<release>/), as make's targets do.
			os.Setenv("ISTIO", rel)
			versions = append(versions, istiodVersion())
		}
		rep.Istiod = strings.Join(versions, ", ")
	}
	for _, rel := range rels {
		if rel != "" {
			os.Setenv("ISTIO", rel)
		}
		for _, n := range ns {
			for i, k := range ks {
				c := cfg
				c.Istiods = k
				if i > 0 {
					c.Routes = []string{"A"} // replicas are Route A's question
				}
				rs, err := bench.RunScale(env, bench.Dataset{N: n, M: *perSvc}, c)
				for j := range rs {
					rs[j].Release = rel
				}
				rep.Results = append(rep.Results, rs...)
				// Write after every run: a long run that dies late keeps what it measured.
				if _, werr := rep.Write(*out); werr != nil {
					fail(werr)
				}
				if err != nil {
					env.Close()
					fail(fmt.Errorf("Istio %s, %d×%d, %d istiod(s): %w", rel, n, *perSvc, k, err))
				}
			}
		}
	}
	files, err := rep.Write(*out)
	if err != nil {
		fail(err)
	}
	fmt.Println()
	fmt.Print(rep.Markdown())
	fmt.Printf("\nwrote %s\n", strings.Join(files, ", "))
}

func istiodVersion() string {
	bin, err := harness.Binary("pilot-discovery")
	if err != nil {
		return "unknown"
	}
	b, err := exec.Command(bin, "version", "--short").Output()
	if err != nil {
		return "unknown"
	}
	// pilot-discovery prints "client version: <version>".
	return strings.TrimPrefix(strings.TrimSpace(string(b)), "client version: ")
}

// counts parses flag name's comma-separated positive numbers.
func counts(name, list, what string) []int {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fail(fmt.Errorf("-%s: %q is not %s", name, s, what))
		}
		out = append(out, n)
	}
	return out
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench failed:", err)
	os.Exit(1)
}
