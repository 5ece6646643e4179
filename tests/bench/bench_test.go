package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := Summarize(d)
	assert.Equal(t, Stats{Count: 100, P50: 50, P90: 90, P99: 99, Max: 100}, s)
	assert.Equal(t, Stats{}, Summarize(nil))
}

func TestDatasetAddresses(t *testing.T) {
	d := Dataset{N: 10000, M: 10}
	require.NoError(t, d.Validate())
	assert.Equal(t, "198.18.0.1", d.IP(Instance{0, 0}))
	assert.Equal(t, "198.19.134.160", d.IP(Instance{9999, 9}), "the last address stays inside 198.18.0.0/15")
	big := Dataset{N: 30000, M: 10}
	require.NoError(t, big.Validate())
	assert.Equal(t, "198.19.255.254", big.IP(Instance{13106, 9}), "the range's last address")
	assert.Equal(t, big.IP(Instance{0, 0}), big.IP(Instance{13107, 0}), "then addresses repeat, in another service")
	assert.Error(t, Dataset{N: 1, M: 1 << 17}.Validate())
	assert.Equal(t, "outbound|8080||svc-00042.service.consul", d.Cluster(42))
}

// A warm-up change is waited for but never measured: no latency, never
// unseen; a watcher that already holds it (it never saw the change being
// undone) is not waited for.
func TestTrackerWarmUpIsUncounted(t *testing.T) {
	tr := newTracker(map[string]int{"c": 2}, 2)
	both := map[string]bool{"a:1": true, "b:1": true}
	tr.observeAddrs(0, "c", both, time.Now())
	tr.observeAddrs(1, "c", both, time.Now())

	out := tr.ExpectUncounted("c", "a:1", false, nil)
	tr.observeAddrs(0, "c", map[string]bool{"b:1": true}, time.Now()) // watcher 1 never sees it
	select {
	case <-out:
		t.Fatal("done before watcher 1 saw the change")
	default:
	}
	back := tr.ExpectUncounted("c", "a:1", true, nil)
	select {
	case <-back:
		t.Fatal("done before watcher 0 saw the restore")
	default:
	}
	tr.observeAddrs(0, "c", both, time.Now())
	select {
	case <-back: // watcher 1 held a:1 all along
	default:
		t.Fatal("the restore must not wait for a watcher that already holds it")
	}
	lat, unseen := tr.Latencies()
	assert.Empty(t, lat, "warm-up changes are not measured")
	assert.Zero(t, unseen, "warm-up changes are never unseen")

	onlyFirst := tr.ExpectUncounted("c", "a:1", false, func(w int) bool { return w == 0 })
	tr.observeAddrs(0, "c", map[string]bool{"b:1": true}, time.Now())
	select {
	case <-onlyFirst: // watcher 1 is not waited for
	default:
		t.Fatal("a warm-up change must not wait for watchers outside by")
	}
	tr.observeAddrs(0, "c", both, time.Now())

	counted := tr.Expect("c", "b:1", false)
	tr.observeAddrs(0, "c", map[string]bool{"a:1": true}, time.Now())
	tr.observeAddrs(1, "c", map[string]bool{"a:1": true}, time.Now())
	<-counted
	lat, unseen = tr.Latencies()
	assert.Len(t, lat, 2)
	assert.Zero(t, unseen)
}

// smallRun runs every route at 20×3 with cfg's kind of churn and mode (in
// ambient mode every route but C, which cannot reach ztunnel).
func smallRun(t *testing.T, cfg Config) []Result {
	t.Helper()
	env, err := harness.NewProcessEnv("pilot-consul-bench-test")
	require.NoError(t, err)
	t.Cleanup(env.Close)
	env.Quiet = true
	cfg.Watchers, cfg.Rate, cfg.Churn, cfg.SyncTimeout, cfg.Step = 2, 5, 3*time.Second, 2*time.Minute, t.Logf
	rs, err := RunScale(env, Dataset{N: 20, M: 3}, cfg)
	require.NoError(t, err)
	want := []string{RouteA, RouteK, RouteC, RouteB}
	if cfg.Ambient {
		want = []string{RouteA, RouteK, RouteB}
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Route)
	}
	require.Equal(t, want, got)
	return rs
}

// TestBenchSmall runs every route end to end at a tiny scale, so `make
// bench` cannot rot between runs: same code path, seconds instead of minutes.
func TestBenchSmall(t *testing.T) {
	rs := smallRun(t, Config{})
	for _, r := range rs {
		assert.True(t, r.Synced, r.Route)
		assert.Positive(t, r.Changes, r.Route)
		assert.Zero(t, r.Unseen, "%s: every change reached every watcher", r.Route)
		assert.Equal(t, r.Changes*2, r.Latency.Count, r.Route)
		assert.Positive(t, r.PeakRSSBytes, r.Route)
	}
	// The watch of the status nobody is in (warning, here) wakes on every
	// check write and answers an empty list: Consul's status index cannot
	// watch an empty subtree. The flipped service's read is the third.
	assert.LessOrEqual(t, rs[0].ConsulPerChg, 3.0, "Route A: at most 3 Consul requests per instance change")
	assert.LessOrEqual(t, rs[0].ConsulPeak, int64(32+4))
	assert.Zero(t, rs[0].FullPushes, "Route A: instance churn causes no full push")
	assert.Zero(t, rs[1].FullPushes, "Route K: an EndpointSlice update causes no full push")
	// Proxyless clients included (patch 0006): before it, each endpoint-only
	// push rebuilt and sent their listeners and clusters.
	assert.Zero(t, rs[0].CDSPushes, "Route A: a health flip pushes EDS only")
	assert.Zero(t, rs[1].CDSPushes, "Route K: an EndpointSlice update pushes EDS only")
	assert.LessOrEqual(t, rs[2].ConsulPerChg, 3.0, "Route C: the same Consul reads as A")
	assert.Positive(t, rs[2].MCPPeakRSSBytes, "Route C: the server's memory")
	assert.Positive(t, rs[2].MCPBytesPerChg, "Route C: bytes on the MCP stream")
	rep := &Report{Results: rs}
	files, err := rep.Write(t.TempDir())
	require.NoError(t, err)
	assert.Len(t, files, 2)
	md := rep.Markdown()
	assert.Contains(t, md, "| scale | metric | Route A (Consul registry) | Route K (Kubernetes Services) | Route C (MCP, istiod as shipped) | Route B (SE+WE) | A/K | A/C | A/B |")
	assert.Regexp(t, `\| 20×3 \| change→client p99 \(ms\) \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|`, md)
	assert.Regexp(t, `\| 20×3 \| MCP stream bytes per change \(per istiod\) \| – \| – \| [0-9]+ \| – \|`, md)
}

// TestReportOfOneRoute: a run of Route A alone (-routes A) still writes its
// figures, with no ratio columns.
func TestReportOfOneRoute(t *testing.T) {
	rep := &Report{Results: []Result{{Route: RouteA, Services: 10000, PerSvc: 10, Synced: true, SyncSeconds: 9.5,
		Latency: Stats{P50: 220, P99: 640}}}}
	md := rep.Markdown()
	assert.Contains(t, md, "| scale | metric | Route A (Consul registry) |\n|---|---|---:|\n")
	assert.Contains(t, md, "| 10000×10 | initial sync | 9.50 s |\n")
	assert.Contains(t, md, "| 10000×10 | change→client p99 (ms) | 640.0 |\n")
}

func TestParseRoutes(t *testing.T) {
	rs, err := ParseRoutes("b, k")
	require.NoError(t, err)
	assert.Equal(t, []string{"B", "K"}, rs)
	cfg := Config{Routes: rs}
	assert.False(t, cfg.wants(RouteA))
	assert.True(t, cfg.wants(RouteK))
	assert.True(t, Config{}.wants(RouteA), "no selection: every route")
	_, err = ParseRoutes("A,X")
	assert.ErrorContains(t, err, `route "X"`)
	rs, err = ParseRoutes("c")
	require.NoError(t, err)
	assert.True(t, Config{Routes: rs}.wants(RouteC))
}

// TestBenchSmallRegistrations: the same with instances deregistered and
// registered again instead of flipped: each costs Consul a few requests
// (the listing, the two health watches, which wake on every check write
// while no check is critical or warning, a spaced read of every check,
// the service), never a full push.
func TestBenchSmallRegistrations(t *testing.T) {
	rs := smallRun(t, Config{Kind: ChurnRegister})
	for _, r := range rs {
		assert.True(t, r.Synced, r.Route)
		assert.Positive(t, r.Changes, r.Route)
		assert.Zero(t, r.Unseen, "%s: every change reached every watcher", r.Route)
	}
	assert.LessOrEqual(t, rs[0].ConsulPerChg, 5.0, "Route A: Consul requests per registration change")
	assert.Zero(t, rs[0].FullPushes, "Route A: registrations cause no full push")
	rep := &Report{Results: rs}
	rep.Config.Kind = ChurnRegister
	assert.Contains(t, rep.Markdown(), "deregistrations and registrations/s")
}

// TestBenchSmallAmbient: the same with ambient on and a WDS watcher
// subscribed as ztunnel. Route A's health flips reach it. Route B's never
// do: istiod's ambient index gives every WorkloadEntry HEALTHY ("TODO: WE
// can be unhealthy" upstream), so a bridge's health is invisible to ztunnel.
func TestBenchSmallAmbient(t *testing.T) {
	rs := smallRun(t, Config{Ambient: true})
	for _, r := range rs {
		assert.True(t, r.Synced, "%s: the xDS and the WDS watchers hold everything", r.Route)
		assert.Positive(t, r.Changes, r.Route)
		assert.Equal(t, r.Changes*2, r.Latency.Count, "%s: xDS samples", r.Route)
	}
	a, k, b := rs[0], rs[1], rs[2]
	assert.Zero(t, a.Unseen, "Route A: every change reached every watcher, WDS included")
	assert.Zero(t, k.Unseen, "Route K: every change reached every watcher, WDS included")
	assert.Equal(t, k.Changes, k.WDSLat.Count)
	assert.Equal(t, a.Changes, a.WDSLat.Count)
	assert.Zero(t, a.FullPushes, "Route A: instance churn causes no full push, ambient on")
	assert.Zero(t, b.WDSLat.Count, "Route B: no health flip reaches WDS")
	assert.Equal(t, b.Changes, b.Unseen, "Route B: only the WDS watcher misses them")
	rep := &Report{Results: rs}
	rep.Config.Ambient = true
	assert.Contains(t, rep.Markdown(), "| 20×3 | change→WDS (ztunnel-like) p99 (ms) | ")
	assert.Contains(t, rep.Markdown(), "| never |")
}

// TestReportOfARouteThatNeverSynced: a route that never synced shows its
// timeout as a lower bound, A's sync ratio to it as a bound, and no
// figure that it never measured.
func TestReportOfARouteThatNeverSynced(t *testing.T) {
	rep := &Report{Results: []Result{
		{Route: RouteA, Services: 10000, PerSvc: 10, Synced: true, SyncSeconds: 10, Settled: true, SettleSeconds: 0.5},
		{Route: RouteB, Services: 10000, PerSvc: 10, SyncSeconds: 600},
	}}
	md := rep.Markdown()
	assert.Contains(t, md, "| 10000×10 | initial sync | 10.00 s | > 600.00 s | < 0.02 |\n")
	assert.Contains(t, md, "| 10000×10 | settled after sync (warm-up flip out and back, xDS) | 0.50 s | – (never synced) |  |\n")
	assert.Contains(t, md, "| 10000×10 | change→client p99 (ms) | 0.0 | – (never synced) |  |\n")
}

// TestBenchSmallReplicasAndPeers: Route A with two istiods on one Consul
// (each replica's clients served, a p99 each, Consul's use counted for
// both, the first replica and Consul profiled), and Route P, the
// per-service blocking queries, beside it.
func TestBenchSmallReplicasAndPeers(t *testing.T) {
	env, err := harness.NewProcessEnv("pilot-consul-bench-test")
	require.NoError(t, err)
	t.Cleanup(env.Close)
	env.Quiet = true
	cfg := Config{Watchers: 2, Rate: 5, Churn: 3 * time.Second, SyncTimeout: 2 * time.Minute, Step: t.Logf,
		Routes: []string{"A", "P"}, Istiods: 2, Idle: time.Second, ProfileDir: t.TempDir()}
	rs, err := RunScale(env, Dataset{N: 20, M: 3}, cfg)
	require.NoError(t, err)
	require.Len(t, rs, 2)
	a, p := rs[0], rs[1]
	assert.Equal(t, RouteA, a.Route)
	assert.Equal(t, 2, a.Istiods)
	assert.True(t, a.Synced)
	assert.Zero(t, a.Unseen, "every change reached both replicas' clients")
	assert.Equal(t, a.Changes*4, a.Latency.Count, "two clients per replica")
	assert.Len(t, a.ReplicaP99, 2)
	assert.LessOrEqual(t, a.ConsulPerChg, 6.0, "at most 3 requests per change per replica")
	assert.Positive(t, a.ConsulBytesPerChg)
	assert.Positive(t, a.ConsulPeakRSSBytes)
	assert.GreaterOrEqual(t, a.ConsulIdle.Seconds, 1.0, "the idle window was measured")
	assert.Equal(t, RouteP, p.Route)
	assert.True(t, p.Synced)
	assert.Zero(t, p.Unseen, "every change reached the per-service watcher")
	assert.Equal(t, p.Changes, p.Latency.Count)
	assert.InDelta(t, 1.0, p.ConsulPerChg, 0.34, "one request per change: the changed service's query")
	md := (&Report{Results: rs}).Markdown()
	assert.Contains(t, md, "| 20×3, 2 istiods | change→client p99 per replica (ms) |")
	assert.Contains(t, md, "| 20×3, 2 istiods | Consul requests per change; peak connections |")
	for _, name := range []string{"istiod-a-startup-20x3-replica1of2", "istiod-a-heap-20x3-replica1of2",
		"istiod-a-churn-20x3-replica1of2", "consul-a-churn-20x3-replica1of2"} {
		b, err := os.ReadFile(filepath.Join(cfg.ProfileDir, name+".pprof"))
		if assert.NoError(t, err, "profile saved") {
			assert.True(t, bytes.HasPrefix(b, []byte{0x1f, 0x8b}), "%s is a pprof profile (gzip)", name)
		}
	}
}

func TestProfileNames(t *testing.T) {
	d := Dataset{N: 10000, M: 10}
	assert.Equal(t, "istiod-a-churn-10000x10.pprof", profileName("istiod", RouteA, churnProfile(ChurnHealth), d, 1))
	assert.Equal(t, "istiod-a-churn-10000x10.pprof", profileName("istiod", RouteA, churnProfile(""), d, 1))
	assert.Equal(t, "consul-a-registrations-10000x10-replica1of3.pprof",
		profileName("consul", RouteA, churnProfile(ChurnRegister), d, 3))
	assert.Equal(t, 29, profileSeconds(30*time.Second))
	assert.Equal(t, 1, profileSeconds(time.Second))
}

// A run over two releases reports each release's routes apart and every
// figure of the first release as a ratio to the second, route by route.
func TestReportComparesReleases(t *testing.T) {
	res := func(route, rel string, sync, p99 float64) Result {
		return Result{Route: route, Release: rel, Services: 1000, PerSvc: 10, Synced: true, Settled: true,
			SyncSeconds: sync, SettleSeconds: 0.2, Latency: Stats{Count: 10, P50: p99 / 2, P99: p99}, CPUSyncSec: 1, CPUChurnSec: 1, PeakRSSBytes: 1 << 28}
	}
	rep := &Report{Results: []Result{
		res(RouteA, "1.31.0-rc.0", 3, 120), res(RouteK, "1.31.0-rc.0", 2, 100),
		res(RouteA, "1.30.3", 2, 100), res(RouteK, "1.30.3", 2, 110),
	}}
	md := rep.Markdown()
	assert.Contains(t, md, "| 1000×10, Istio 1.31.0-rc.0 | initial sync | 3.00 s | 2.00 s | 1.50 |")
	assert.Contains(t, md, "| 1000×10, Istio 1.30.3 | initial sync | 2.00 s | 2.00 s | 1.00 |")
	assert.Contains(t, md, "| scale | route | metric | 1.31.0-rc.0/1.30.3 |")
	assert.Contains(t, md, "| 1000×10 | "+RouteA+" | initial sync | 1.50 |")
	assert.Contains(t, md, "| 1000×10 | "+RouteA+" | change→client p99 | 1.20 |")
	assert.Contains(t, md, "| 1000×10 | "+RouteK+" | change→client p99 | 0.91 |")

	one := &Report{Results: []Result{res(RouteA, "", 3, 120)}}
	assert.NotContains(t, one.Markdown(), "Across releases", "one release: no comparison")
}
