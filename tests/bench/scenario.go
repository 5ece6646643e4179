package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Config is one benchmark run's shape.
type Config struct {
	Watchers int           // xDS clients; even ids are sidecar-like, odd ids proxyless
	Rate     float64       // changes per second during churn
	Churn    time.Duration // how long churn runs
	// Kind of change churn makes: ChurnHealth (an instance's health flips)
	// or ChurnRegister (it is deregistered and registered again).
	Kind        string
	SyncTimeout time.Duration // how long istiod may take to serve everything
	// ProfileDir, if set, receives pprof profiles: istiod's CPU (start-up,
	// churn), its heap once synced, and the Consul server's CPU in churn.
	ProfileDir string
	// Routes to measure, by letter ("A", "K", "B"); nil is all three. They
	// run in that order whatever the order given.
	Routes []string
	// Ambient runs istiod with PILOT_ENABLE_AMBIENT=true and adds a WDS
	// watcher (as ztunnel subscribes), whose latency is reported apart.
	Ambient bool
	// Istiods is how many istiod replicas Route A runs on the one Consul
	// (0 or 1: one), each with Watchers watchers.
	Istiods int
	// ConsulHTTPS runs Route A over HTTPS (consul_tls.go).
	ConsulHTTPS bool
	// ConsulMaxConns raises Route A's Consul limits.http_max_conns_per_client
	// (0: Consul's default, 200): a watch per service over plain HTTP needs
	// a connection each (with --consulMaxConnections in ConsulArgs).
	ConsulMaxConns int
	// ConsulArgs are added to Route A's istiod flags (registry tuning:
	// --consulMaxConcurrentRequests and the like).
	ConsulArgs []string
	// Idle, if set, is a quiet window after the warm-up in which Consul's
	// load (requests, bytes, CPU) is measured with nothing changing.
	Idle time.Duration
	Step func(format string, args ...any)
}

// Churn kinds (Config.Kind).
const (
	ChurnHealth   = "health"
	ChurnRegister = "register"
)

// Route names, as reported.
const (
	RouteA = "A: Consul registry"
	RouteK = "K: Kubernetes Services"
	RouteB = "B: ServiceEntry+WorkloadEntry"
	RouteC = "C: MCP-over-xDS (consul-mcp, istiod as shipped)"
	// RouteE is Route C with each service's instances inline in its
	// ServiceEntry (consul-mcp --inlineEndpoints); run only when asked.
	RouteE = "E: MCP-over-xDS, inline endpoints (consul-mcp --inlineEndpoints)"
	// RouteP runs no istiod: one blocking query per service, as peers'
	// watchers hold them (per_service.go), for what that costs Consul.
	RouteP = "P: one blocking query per service (peers' watchers)"
)

// routes is every route in run order: the references before the bridges,
// and B last, whose 10,000-service run can take the whole sync timeout.
var routes = []string{RouteA, RouteK, RouteC, RouteE, RouteB, RouteP}

// wants reports whether cfg measures route.
func (c Config) wants(route string) bool {
	return c.Routes == nil || slices.Contains(c.Routes, route[:1])
}

// wantsOnly reports whether cfg names route: Route P, which is not a way
// to serve a mesh, runs only when asked for.
func (c Config) wantsOnly(route string) bool { return slices.Contains(c.Routes, route[:1]) }

// ParseRoutes turns "A,K,C,E,B" (any order, any subset) into Config.Routes.
func ParseRoutes(s string) ([]string, error) {
	var out []string
	for _, r := range strings.Split(s, ",") {
		r = strings.ToUpper(strings.TrimSpace(r))
		if !slices.ContainsFunc(routes, func(name string) bool { return name[:1] == r }) {
			return nil, fmt.Errorf("route %q: want A, K, C, E, B or P", r)
		}
		out = append(out, r)
	}
	return out, nil
}

// Result is one route at one scale.
type Result struct {
	Route    string `json:"route"`
	Services int    `json:"services"`
	PerSvc   int    `json:"instances_per_service"`
	Watchers int    `json:"watchers"`

	LoadSeconds float64 `json:"load_seconds"`         // writing the data into the source (not timed against the route)
	SyncSeconds float64 `json:"initial_sync_seconds"` // istiod start -> every watcher has every service
	Synced      bool    `json:"synced"`
	// SettleSeconds: how long a warm-up flip out and back took to reach
	// every xDS watcher after the initial sync (Settled false: not within
	// settleBound).
	SettleSeconds float64 `json:"settle_seconds"`
	Settled       bool    `json:"settled"`
	CPUSyncSec    float64 `json:"istiod_cpu_sync_seconds"`
	CPUChurnSec   float64 `json:"istiod_cpu_churn_seconds"`
	PeakRSSBytes  int64   `json:"istiod_peak_rss_bytes"`
	Changes       int     `json:"changes"`
	ChangeRate    float64 `json:"changes_per_second"`
	Latency       Stats   `json:"change_to_client_ms"`
	SidecarLat    Stats   `json:"change_to_sidecar_ms"`   // even watcher ids
	ProxylessLat  Stats   `json:"change_to_proxyless_ms"` // odd watcher ids
	WDSLat        Stats   `json:"change_to_wds_ms"`       // the WDS watcher (Config.Ambient)
	Unseen        int     `json:"unseen_change_watcher_pairs"`
	FullPushes    float64 `json:"full_pushes_during_churn"` // pushes istiod was asked for, for other changes than endpoints
	CDSPushes     float64 `json:"cds_pushes_during_churn"`  // CDS pushes per watcher
	EDSPushes     float64 `json:"eds_pushes_during_churn"`  // EDS pushes per watcher
	ConsulReqs    int64   `json:"consul_requests_during_churn,omitempty"`
	ConsulPerChg  float64 `json:"consul_requests_per_change,omitempty"`
	ConsulPeak    int64   `json:"consul_peak_connections,omitempty"`
	// What Consul (one dev agent, the server) spent: response bytes and
	// its CPU per change during churn, its peak RSS, and its load in the
	// idle window (Config.Idle).
	ConsulBytesPerChg  float64   `json:"consul_bytes_per_change,omitempty"`
	ConsulCPUPerChgMs  float64   `json:"consul_cpu_ms_per_change,omitempty"`
	ConsulPeakRSSBytes int64     `json:"consul_peak_rss_bytes,omitempty"`
	ConsulIdle         ConsulUse `json:"consul_idle"`
	ConsulChurn        ConsulUse `json:"consul_churn"` // the churn window, deliveries included
	// Istiods is the number of replicas (Route A, Config.Istiods); RSS is
	// then the largest replica's, CPU and pushes all replicas' together,
	// and ReplicaP99 each replica's watchers' p99 (ms).
	Istiods int `json:"istiods,omitempty"`
	// Release is the Istio release of the istiod measured, when a run
	// measures more than one (bench -releases).
	Release    string    `json:"istio_release,omitempty"`
	ReplicaP99 []float64 `json:"replica_p99_ms,omitempty"`
	// Route C's MCP server, beside istiod.
	MCPCPUSyncSec   float64   `json:"mcp_cpu_sync_seconds,omitempty"`
	MCPCPUChurnSec  float64   `json:"mcp_cpu_churn_seconds,omitempty"`
	MCPPeakRSSBytes int64     `json:"mcp_peak_rss_bytes,omitempty"`
	MCPBytesPerChg  float64   `json:"mcp_bytes_per_change,omitempty"`
	SampleMillis    []float64 `json:"latency_samples_ms"`
}

// RunScale measures the routes on one dataset. Each route gets a fresh
// istiod; Consul and the kube-apiserver are shared and stop at the end,
// except Route K's kube-apiserver, which holds its Services alone so that
// neither K's nor B's istiod reads the other's objects.
func RunScale(parent *harness.ProcessEnv, data Dataset, cfg Config) ([]Result, error) {
	if err := data.Validate(); err != nil {
		return nil, err
	}
	env := parent.Child()
	defer env.Close()
	ctx := context.Background()
	step := cfg.Step

	step("%d×%d: starting Consul and kube-apiserver", data.N, data.M)
	configure := []func(*harness.ConsulConfig){func(c *harness.ConsulConfig) { c.MaxConnsPerClient = cfg.ConsulMaxConns }}
	var https *consulTLS
	if cfg.ConsulHTTPS {
		t, withTLS, err := newConsulTLS(env)
		if err != nil {
			return nil, err
		}
		https, configure = t, append(configure, withTLS)
	}
	consul, kube, err := startBackends(env, configure...)
	if err != nil {
		return nil, err
	}
	if err := kube.EnsureNamespace(ctx, Namespace); err != nil {
		return nil, err
	}

	var out []Result
	if cfg.wants(RouteA) {
		a, err := measureA(env, consul, kube, https, data, cfg)
		if err != nil {
			return out, fmt.Errorf("route A: %w", err)
		}
		out = append(out, a)
	}
	if cfg.wants(RouteK) {
		k, err := measureK(env, data, cfg)
		if err != nil {
			return out, fmt.Errorf("route K: %w", err)
		}
		out = append(out, k)
	}
	if cfg.wants(RouteC) && cfg.Ambient {
		// Nothing to measure: upstream's ambient index never reads MCP
		// configs (tests/mcp TestAmbientDoesNotSeeMCPConfig), so the WDS
		// watcher would wait out the sync timeout for nothing.
		step("%s: not run in ambient mode: MCP configs never reach ztunnel", RouteC)
	} else if cfg.wants(RouteC) {
		c, err := measureC(env, data, cfg, RouteC)
		if err != nil {
			return out, fmt.Errorf("route C: %w", err)
		}
		out = append(out, c)
	}
	if cfg.wantsOnly(RouteE) && !cfg.Ambient {
		e, err := measureC(env, data, cfg, RouteE)
		if err != nil {
			return out, fmt.Errorf("route E: %w", err)
		}
		out = append(out, e)
	}
	if cfg.wants(RouteB) {
		b, err := measureB(env, kube, data, cfg)
		if err != nil {
			return out, fmt.Errorf("route B: %w", err)
		}
		out = append(out, b)
	}
	if cfg.wantsOnly(RouteP) {
		p, err := measureP(env, data, cfg)
		if err != nil {
			return out, fmt.Errorf("route P: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// measureA loads the dataset into Consul and measures our registry reading
// it through a proxy that counts requests and connections (over HTTPS, if
// https is set).
func measureA(env *harness.ProcessEnv, consul *harness.Consul, kube *harness.Kube, https *consulTLS, data Dataset, cfg Config) (Result, error) {
	var proxy *harness.FaultProxy
	var err error
	args := []string{}
	if https != nil {
		proxy, err = https.proxy(env)
		args = https.args()
	} else {
		proxy, err = harness.StartFaultProxy(env, consul.URL()) // injects nothing
	}
	if err != nil {
		return Result{}, err
	}
	args = append(append(args, "--consulServerURL", proxy.URL), cfg.ConsulArgs...)
	src := &ConsulSource{Client: consul.Client, Data: data}
	return measure(env, kube, data, cfg, RouteA, src, fmt.Sprintf("loaded %d instances into Consul", data.N*data.M),
		launch{consul: proxy, backend: consul, args: args})
}

// measureC loads the dataset into a Consul of its own (Route A's churn has
// moved the shared one) and measures consul-mcp serving it to the
// release's istiod as shipped, through the same counting proxy. Its sync
// runs from the server's start, as A's from istiod's: both read Consul.
// Route E is the same with inline endpoints.
func measureC(parent *harness.ProcessEnv, data Dataset, cfg Config, route string) (Result, error) {
	env := parent.Child()
	defer env.Close()
	consul, kube, err := startBackends(env)
	if err != nil {
		return Result{}, err
	}
	proxy, err := harness.StartFaultProxy(env, consul.URL())
	if err != nil {
		return Result{}, err
	}
	src := &ConsulSource{Client: consul.Client, Data: data}
	l := launch{consul: proxy, backend: consul, mcp: true}
	if route == RouteE {
		l.args = []string{"--inlineEndpoints"}
	}
	return measure(env, kube, data, cfg, route, src, fmt.Sprintf("loaded %d instances into Consul", data.N*data.M), l)
}

// measureK writes the dataset as Services and EndpointSlices into a
// kube-apiserver of its own and measures istiod's Kubernetes registry alone.
func measureK(parent *harness.ProcessEnv, data Dataset, cfg Config) (Result, error) {
	env := parent.Child()
	defer env.Close()
	kube, err := harness.StartKube(env)
	if err != nil {
		return Result{}, err
	}
	if err := kube.EnsureNamespace(context.Background(), Namespace); err != nil {
		return Result{}, err
	}
	client, err := kubernetes.NewForConfig(unthrottled(kube))
	if err != nil {
		return Result{}, err
	}
	data.Domain = KubeDomain
	src := &KubeServices{Client: client, Data: data}
	return measure(env, kube, data, cfg, RouteK, src, fmt.Sprintf("wrote %d Services and EndpointSlices", data.N),
		launch{args: []string{"--registries=Kubernetes"}})
}

// measureB writes the dataset as ServiceEntries and WorkloadEntries and
// measures istiod reading them.
func measureB(env *harness.ProcessEnv, kube *harness.Kube, data Dataset, cfg Config) (Result, error) {
	dyn, err := dynamic.NewForConfig(unthrottled(kube))
	if err != nil {
		return Result{}, err
	}
	src := &KubeSource{Client: dyn, Data: data}
	return measure(env, kube, data, cfg, RouteB, src,
		fmt.Sprintf("wrote %d ServiceEntries and %d WorkloadEntries", data.N, data.N*data.M), launch{args: []string{"--registries=Kubernetes"}})
}

// source is where a route's dataset lives: written before istiod starts,
// then changed one write at a time.
type source interface {
	Load(ctx context.Context) error
	SetHealthy(ctx context.Context, in Instance, healthy bool) error
	SetRegistered(ctx context.Context, in Instance, registered bool) error
}

// measure loads src (timed, but not counted against the route: istiod is
// not running yet), then measures the route with churn of cfg's kind.
func measure(env *harness.ProcessEnv, kube *harness.Kube, data Dataset, cfg Config, route string, src source, loaded string,
	l launch,
) (Result, error) {
	start := time.Now()
	if err := src.Load(context.Background()); err != nil {
		return Result{}, err
	}
	load := time.Since(start)
	cfg.Step("%d×%d: %s in %s", data.N, data.M, loaded, load.Round(time.Millisecond))
	set := setHealth(src.SetHealthy)
	if cfg.Kind == ChurnRegister {
		set = src.SetRegistered
	}
	r, err := runRoute(env, kube, data, cfg, route, l, set)
	r.LoadSeconds = load.Seconds()
	return r, err
}

// unthrottled lifts client-go's default rate limit: the writers' work is
// not what is measured, and loading 110,000 objects should take minutes, not ten.
func unthrottled(kube *harness.Kube) *rest.Config {
	fast := rest.CopyConfig(kube.Config)
	fast.QPS, fast.Burst = 5000, 10000
	return fast
}

// launch is how a route's istiod runs: the patched one with args (A: the
// Consul registry on, reading through consul; K, B: Kubernetes only), or
// (mcp) the release's as shipped reading a consul-mcp server that reads
// through consul, the two started together.
type launch struct {
	consul  *harness.FaultProxy // counts Consul requests (A, C)
	backend *harness.Consul     // behind consul: its CPU and memory are measured
	mcp     bool
	args    []string // istiod's; consul-mcp's with mcp
}

// build makes the route's istiod (and server), not started.
func (l launch) build(env *harness.ProcessEnv, kube *harness.Kube) (*harness.Istiod, *harness.MCP, error) {
	if !l.mcp {
		consulURL := "" // K, B: the Consul registry is off
		if l.consul != nil {
			consulURL = l.consul.URL
		}
		i, err := harness.NewIstiod(env, kube, consulURL, append([]string{"--log_output_level", "default:warn,consul:warn"}, l.args...)...)
		return i, nil, err
	}
	server, err := harness.NewMCP(env, l.consul.URL, append([]string{"--log_output_level", "default:warn,consul:warn,mcp:warn"}, l.args...)...)
	if err != nil {
		return nil, nil, err
	}
	i, err := harness.NewUpstreamIstiod(env, kube, harness.MCPMeshConfig(server.XDSAddr), "--log_output_level", "default:warn")
	return i, server, err
}

// runRoute starts istiod (cfg.Istiods replicas on Route A, each with its
// own cfg.Watchers watchers), waits for every watcher to hold everything,
// churns and collects the measurements, then stops istiod.
func runRoute(env *harness.ProcessEnv, kube *harness.Kube, data Dataset, cfg Config, route string,
	l launch, set setHealth,
) (Result, error) {
	replicas := 1
	if route == RouteA {
		replicas = max(cfg.Istiods, 1)
	}
	xdsWatchers := cfg.Watchers * replicas
	r := Result{Route: route, Services: data.N, PerSvc: data.M, Watchers: cfg.Watchers, Istiods: replicas}
	proxy := l.consul
	var istiods []*harness.Istiod
	var server *harness.MCP
	for range replicas {
		istiod, srv, err := l.build(env, kube)
		if err != nil {
			return r, err
		}
		istiod.ReadyTimeout, istiod.KeepUnready = cfg.SyncTimeout, true
		if cfg.Ambient {
			istiod.Env = append(istiod.Env, "PILOT_ENABLE_AMBIENT=true")
		}
		defer istiod.Stop()
		istiods, server = append(istiods, istiod), srv
	}
	istiod := istiods[0] // profiled; its ambient WDS is watched
	cfg.Step("%s: starting %d istiod(s)", route, replicas)
	start := time.Now()
	startupProfiled := make(chan struct{})
	if cfg.ProfileDir != "" {
		// As soon as istiod's debug port answers: start-up is what it covers.
		go func() {
			defer close(startupProfiled)
			for time.Since(start) < 30*time.Second {
				name := profileName("istiod", route, "startup", data, replicas)
				if err := saveProfile(cfg.ProfileDir, name, cpuProfile(istiod.DebugTimeout, 11*time.Second)); err == nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	} else {
		close(startupProfiled)
	}
	if server != nil {
		defer server.Stop()
		// istiod exits when its config source does not answer: the server
		// must listen first (it does before its first read).
		if err := server.Launch(); err != nil {
			return r, err
		}
	}
	// Replicas start together, as a Deployment's pods do.
	started := make(chan error, replicas)
	for _, i := range istiods {
		go func() { started <- i.Start() }()
	}
	var startErr error
	for range replicas {
		if err := <-started; err != nil && (startErr == nil || !errors.Is(err, harness.ErrNotReady)) {
			startErr = err
		}
	}
	if startErr != nil {
		if !errors.Is(startErr, harness.ErrNotReady) {
			return r, startErr
		}
		// Up but never ready: that is the measurement, not a failure.
		r.SyncSeconds = cfg.SyncTimeout.Seconds()
		cfg.Step("%s: istiod NOT ready after %s", route, cfg.SyncTimeout)
		return r, r.collectEnd(istiods, server, l.backend)
	}
	cfg.Step("%s: istiod ready after %.2fs", route, time.Since(start).Seconds())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchers := xdsWatchers
	if cfg.Ambient {
		watchers++ // the WDS watcher's id is xdsWatchers
	}
	tracker := NewTracker(data, watchers)
	var ended []<-chan error
	for k, i := range istiods {
		e, err := WatchAll(ctx, i.XDSAddr, k*cfg.Watchers, cfg.Watchers, data, tracker)
		if err != nil {
			return r, err
		}
		ended = append(ended, e...)
	}
	if cfg.Ambient {
		wds, err := WatchWDS(env, istiod.XDSAddr, xdsWatchers, data, tracker)
		if err != nil {
			return r, err
		}
		defer wds.Close()
	}
	select {
	case <-tracker.Synced():
		r.Synced = true
	case <-time.After(cfg.SyncTimeout - time.Since(start)):
	case err := <-firstErr(ended):
		return r, fmt.Errorf("xds watcher: %w", err)
	}
	for _, at := range tracker.SyncedAt() {
		r.SyncSeconds = max(r.SyncSeconds, at.Sub(start).Seconds())
	}
	if !r.Synced {
		r.SyncSeconds = cfg.SyncTimeout.Seconds()
		cfg.Step("%s: NOT every watcher had every service after %s; skipping churn", route, cfg.SyncTimeout)
		return r, r.collectEnd(istiods, server, l.backend)
	}
	cpu, err := cpuOf(istiods)
	if err != nil {
		return r, err
	}
	r.CPUSyncSec = cpu.Seconds()
	if server != nil {
		cpu, err := CPU(server.PID())
		if err != nil {
			return r, err
		}
		r.MCPCPUSyncSec = cpu.Seconds()
	}
	cfg.Step("%s: %d watchers hold all %d services (%d endpoints) after %.2fs", route, xdsWatchers, data.N, data.N*data.M, r.SyncSeconds)
	if cfg.ProfileDir != "" {
		// What istiod holds once synced (inuse_*), and what the sync
		// allocated to get there (alloc_*): the peak RSS's two halves.
		heap := func() ([]byte, error) { return istiod.DebugTimeout("/debug/pprof/heap", time.Minute) }
		if err := saveProfile(cfg.ProfileDir, profileName("istiod", route, "heap", data, replicas), heap); err != nil {
			return r, err
		}
	}

	// Pushes from the start must not be counted as churn's: Route B's
	// istiod keeps pushing for seconds after its clients first hold
	// everything, and the ambient index sends its first incremental WDS
	// push seconds after the initial state.
	cfg.Step("%s: warm-up flip", route)
	settle, settled, err := warmUp(ctx, data, tracker, set, xdsWatchers)
	if err != nil {
		return r, err
	}
	r.SettleSeconds, r.Settled = settle.Seconds(), settled
	cfg.Step("%s: warm-up flip out and back seen after %.2fs (by every xDS watcher: %v)", route, settle.Seconds(), settled)
	if proxy != nil && cfg.Idle > 0 {
		cfg.Step("%s: %s idle", route, cfg.Idle)
		r.ConsulIdle, err = measureConsul(proxy, l.backend, func() error { time.Sleep(cfg.Idle); return nil })
		if err != nil {
			return r, err
		}
	}
	before, err := metricsOf(istiods)
	if err != nil {
		return r, err
	}
	cpu0, _ := cpuOf(istiods)
	var mcpBytes0 float64
	var mcpCPU0 time.Duration
	if server != nil {
		m, err := server.Metrics()
		if err != nil {
			return r, err
		}
		mcpBytes0, _ = harness.Samples(m, "consul_mcp_push_bytes_total")
		mcpCPU0, _ = CPU(server.PID())
	}
	cfg.Step("%s: churn, %.0f %s changes/s for %s", route, cfg.Rate, cfg.kind(), cfg.Churn)
	var profiled []<-chan error // the churn's profiles: istiod's, and Consul's
	if cfg.ProfileDir != "" {
		<-startupProfiled // istiod runs one CPU profile at a time
		profiled = append(profiled, inBackground(func() error {
			name := profileName("istiod", route, churnProfile(cfg.Kind), data, replicas)
			return saveProfile(cfg.ProfileDir, name, cpuProfile(istiod.DebugTimeout, cfg.Churn))
		}))
		if l.backend != nil {
			// What each change costs the Consul server, and in whose code.
			profiled = append(profiled, inBackground(func() error {
				name := profileName("consul", route, churnProfile(cfg.Kind), data, replicas)
				return saveProfile(cfg.ProfileDir, name, cpuProfile(l.backend.DebugTimeout, cfg.Churn))
			}))
		}
	}
	var n int
	var churnTook time.Duration
	churned := func() error {
		var err error
		n, churnTook, err = churnAndDeliver(ctx, data, tracker, set, cfg)
		return err
	}
	var consulUse ConsulUse
	if proxy != nil {
		consulUse, err = measureConsul(proxy, l.backend, churned)
	} else {
		err = churned()
	}
	if err != nil {
		return r, err
	}
	r.Changes, r.ChangeRate = n, float64(n)/churnTook.Seconds()
	for _, p := range profiled {
		if err := <-p; err != nil {
			return r, err
		}
	}
	after, err := metricsOf(istiods)
	if err != nil {
		return r, err
	}
	cpu1, _ := cpuOf(istiods)
	r.CPUChurnSec = (cpu1 - cpu0).Seconds()
	if server != nil {
		m, err := server.Metrics()
		if err != nil {
			return r, err
		}
		mcpBytes1, _ := harness.Samples(m, "consul_mcp_push_bytes_total")
		mcpCPU1, _ := CPU(server.PID())
		r.MCPCPUChurnSec = (mcpCPU1 - mcpCPU0).Seconds()
		r.MCPBytesPerChg = (mcpBytes1 - mcpBytes0) / float64(max(n, 1))
	}
	k := float64(xdsWatchers)
	// A full push is one for a change other than endpoints or ambient
	// addresses (the WDS workloads and services ztunnel gets): it rebuilds
	// what depends on services. Counted by its trigger, the same on every
	// release (Istio 1.31 removed PushRequest.Full and builds a push
	// context for every push, endpoint-only ones too). The ambient reason
	// also covers authorization policies, which no bench run changes.
	nonEndpoint := func(m [][]byte) float64 {
		return sumMetric(m, "pilot_push_triggers") - sumMetric(m, "pilot_push_triggers", `type="endpoint"`) -
			sumMetric(m, "pilot_push_triggers", `type="ambient"`)
	}
	r.FullPushes = nonEndpoint(after) - nonEndpoint(before)
	r.CDSPushes = (sumMetric(after, "pilot_xds_pushes", `type="cds"`) - sumMetric(before, "pilot_xds_pushes", `type="cds"`)) / k
	r.EDSPushes = (sumMetric(after, "pilot_xds_pushes", `type="eds"`) - sumMetric(before, "pilot_xds_pushes", `type="eds"`)) / k
	if proxy != nil {
		r.ConsulChurn = consulUse
		r.ConsulReqs = consulUse.Requests
		r.ConsulPerChg = float64(consulUse.Requests) / float64(max(n, 1))
		r.ConsulBytesPerChg = float64(consulUse.Bytes) / float64(max(n, 1))
		r.ConsulCPUPerChgMs = consulUse.CPUSeconds * 1000 / float64(max(n, 1))
		r.ConsulPeak = proxy.PeakConnections()
	}
	_, unseen := tracker.Latencies()
	xds := func(w int) bool { return w < xdsWatchers }
	lat := tracker.LatenciesOf(xds)
	r.Latency, r.Unseen = Summarize(lat), unseen
	r.SidecarLat = Summarize(tracker.LatenciesOf(func(w int) bool { return xds(w) && w%2 == 0 }))
	r.ProxylessLat = Summarize(tracker.LatenciesOf(func(w int) bool { return xds(w) && w%2 == 1 }))
	r.WDSLat = Summarize(tracker.LatenciesOf(func(w int) bool { return w == xdsWatchers }))
	if replicas > 1 {
		for k := range replicas {
			of := func(w int) bool { return w/cfg.Watchers == k && xds(w) }
			r.ReplicaP99 = append(r.ReplicaP99, Summarize(tracker.LatenciesOf(of)).P99)
		}
	}
	r.SampleMillis = millis(lat)
	cfg.Step("%s: %d changes, p50 %.1fms p99 %.1fms max %.1fms, %d unseen", route, n,
		r.Latency.P50, r.Latency.P99, r.Latency.Max, unseen)
	if cfg.Ambient {
		cfg.Step("%s: WDS (ztunnel-like) p50 %.1fms p99 %.1fms", route, r.WDSLat.P50, r.WDSLat.P99)
	}
	return r, r.collectEnd(istiods, server, l.backend)
}

// cpuOf is the CPU time the replicas have used, together.
func cpuOf(istiods []*harness.Istiod) (time.Duration, error) {
	var sum time.Duration
	for _, i := range istiods {
		c, err := CPU(i.PID())
		if err != nil {
			return 0, err
		}
		sum += c
	}
	return sum, nil
}

// metricsOf scrapes every replica.
func metricsOf(istiods []*harness.Istiod) ([][]byte, error) {
	var out [][]byte
	for _, i := range istiods {
		m, err := i.Metrics()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// sumMetric adds a series over the replicas' scrapes.
func sumMetric(scrapes [][]byte, name string, labels ...string) float64 {
	var sum float64
	for _, m := range scrapes {
		sum += harness.Metric(m, name, labels...)
	}
	return sum
}

// warmUp takes one instance out and puts it back, unmeasured, each time
// waiting until every xDS watcher has seen it (up to settleBound): how long
// istiod needed to settle after the initial sync, returned with whether
// they all did. Each step then also waits, up to wdsBound, for the WDS
// watcher, whose first incremental push comes seconds after the initial
// state; Route B's never comes (upstream's ambient index serves every
// WorkloadEntry as healthy). Churn starts with the first service's
// instances; this is the last service's last.
func warmUp(ctx context.Context, data Dataset, t *Tracker, set setHealth, xdsWatchers int) (time.Duration, bool, error) {
	in := Instance{Svc: data.N - 1, Idx: data.M - 1}
	xds := func(w int) bool { return w < xdsWatchers }
	var settle time.Duration
	settled := true
	wait := func(ch <-chan struct{}, bound time.Duration) (bool, error) {
		select {
		case <-ch:
			return true, nil
		case <-time.After(bound):
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	for _, healthy := range []bool{false, true} {
		byXDS := t.ExpectUncounted(data.Cluster(in.Svc), data.Addr(in), healthy, xds)
		byAll := t.ExpectUncounted(data.Cluster(in.Svc), data.Addr(in), healthy, nil)
		start := time.Now()
		if err := set(ctx, in, healthy); err != nil {
			return 0, false, fmt.Errorf("warm-up flip of %s: %w", data.ID(in), err)
		}
		ok, err := wait(byXDS, settleBound)
		if err != nil {
			return 0, false, err
		}
		settle, settled = settle+time.Since(start), settled && ok
		if _, err := wait(byAll, wdsBound); err != nil {
			return 0, false, err
		}
	}
	return settle, settled, nil
}

const (
	settleBound = time.Minute
	wdsBound    = 10 * time.Second
)

func (r *Result) collectEnd(istiods []*harness.Istiod, server *harness.MCP, consul *harness.Consul) error {
	for _, i := range istiods {
		rss, err := PeakRSS(i.PID())
		if err != nil {
			return err
		}
		r.PeakRSSBytes = max(r.PeakRSSBytes, rss) // per replica
	}
	if consul != nil {
		rss, err := PeakRSS(consul.PID())
		if err != nil {
			return err
		}
		r.ConsulPeakRSSBytes = rss
	}
	if server == nil {
		return nil
	}
	var err error
	r.MCPPeakRSSBytes, err = PeakRSS(server.PID())
	return err
}

// firstErr yields the first watcher that ends.
func firstErr(chs []<-chan error) <-chan error {
	out := make(chan error, len(chs))
	for _, c := range chs {
		go func() {
			if err, ok := <-c; ok {
				if err == nil {
					err = fmt.Errorf("stream ended")
				}
				out <- err
			}
		}()
	}
	return out
}

// profileSeconds is a CPU profile's length for a window of d.
func profileSeconds(d time.Duration) int { return max(int(d.Seconds())-1, 1) }

// profileName is a profile's file name: whose (istiod, consul), what of the
// run it covers (startup, churn, registrations, heap), the scale and which
// replica.
func profileName(who, route, what string, data Dataset, replicas int) string {
	of := ""
	if replicas > 1 {
		of = fmt.Sprintf("-replica1of%d", replicas)
	}
	return fmt.Sprintf("%s-%s-%s-%dx%d%s.pprof", who, strings.ToLower(route[:1]), what, data.N, data.M, of)
}

// churnProfile is what a churn profile is called: health flips keep the
// name they always had.
func churnProfile(kind string) string {
	if kind == ChurnRegister {
		return "registrations"
	}
	return "churn"
}

// saveProfile fetches a profile (a pprof endpoint's answer) into dir/name.
func saveProfile(dir, name string, fetch func() ([]byte, error)) error {
	b, err := fetch()
	if err != nil {
		return fmt.Errorf("profile %s: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), b, 0o644)
}

// cpuProfile fetches a CPU profile of d from a server's /debug/pprof.
func cpuProfile(get func(path string, timeout time.Duration) ([]byte, error), d time.Duration) func() ([]byte, error) {
	return func() ([]byte, error) {
		return get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", profileSeconds(d)), d+30*time.Second)
	}
}

// kind is the churn kind, ChurnHealth unless set.
func (c Config) kind() string {
	if c.Kind == "" {
		return ChurnHealth
	}
	return c.Kind
}
