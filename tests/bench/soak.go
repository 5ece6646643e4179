package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// SoakConfig shapes a churn soak against Route A.
type SoakConfig struct {
	Services int           // services, each with Slots instance slots
	Slots    int           // per service; slots 0 and 1 start registered, slot 0 never leaves
	Rate     int           // Consul changes per second
	Duration time.Duration // how long the changes run
	Watchers int
	Step     func(format string, args ...any)
}

// SoakResult is what a soak measured.
type SoakResult struct {
	Changes        int // Consul writes made
	Kinds          map[string]int
	ChangeRate     float64       // achieved writes per second
	Latency        Stats         // change -> every watcher
	Unseen         int           // (change, watcher) pairs never seen (superseded changes excluded)
	Mismatches     []string      // final: watcher state vs Consul's truth
	CPU            time.Duration // istiod CPU during the changes
	PeakRSS        int64
	Goroutines     [3]float64 // istiod: before, at the end of the changes, after settling
	HeapBytes      [3]float64 // istiod go_memstats_heap_inuse_bytes, same points
	ConsulRequests int64      // registry -> Consul during the changes
	FullRereads    float64    // times the registry re-read every service
}

// soakSlot is one instance slot's truth, as the driver wrote it.
type soakSlot struct {
	registered, healthy bool
	busy                bool // a change to it is not yet seen by every watcher
}

// Soak runs Route A under a steady stream of health flips, registrations
// and deregistrations, then checks that every watcher converged on exactly
// Consul's truth and that istiod's goroutines and heap settled back.
func Soak(env harness.Env, cfg SoakConfig) (*SoakResult, error) {
	data := Dataset{N: cfg.Services, M: cfg.Slots}
	if err := data.Validate(); err != nil {
		return nil, err
	}
	ctx := context.Background()
	consul, kube, err := startBackends(env)
	if err != nil {
		return nil, err
	}
	src := &ConsulSource{Client: consul.Client, Data: data}
	slots := make([]soakSlot, data.N*data.M)
	slot := func(in Instance) *soakSlot { return &slots[in.Svc*data.M+in.Idx] }
	want := map[string]int{}
	var initial api.TxnOps
	for i := 0; i < data.N; i++ {
		want[data.Cluster(i)] = 2
		for j := 0; j < 2; j++ {
			in := Instance{i, j}
			*slot(in) = soakSlot{registered: true, healthy: true}
			initial = append(initial, src.registerOps(in)...)
		}
	}
	if err := src.loadOps(ctx, initial); err != nil {
		return nil, err
	}
	proxy, err := harness.StartFaultProxy(env, consul.URL())
	if err != nil {
		return nil, err
	}
	istiod, err := harness.StartIstiod(env, kube, proxy.URL, "--log_output_level", "default:warn,consul:warn")
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tracker := newTracker(want, cfg.Watchers)
	if _, err := WatchAll(wctx, istiod.XDSAddr, 0, cfg.Watchers, data, tracker); err != nil {
		return nil, err
	}
	select {
	case <-tracker.Synced():
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("watchers never held all %d services", data.N)
	}
	time.Sleep(2 * time.Second) // let start-up pushes settle before the baseline
	res := &SoakResult{Kinds: map[string]int{}}
	if err := istiod.ForceGC(); err != nil {
		return nil, err
	}
	base, err := istiod.Metrics()
	if err != nil {
		return nil, err
	}
	res.Goroutines[0], res.HeapBytes[0] = harness.Metric(base, "go_goroutines"), harness.Metric(base, "go_memstats_heap_inuse_bytes")
	cpu0, _ := CPU(istiod.PID())
	reqs0 := proxy.Requests()

	cfg.Step("soak: %d changes/s for %s across %d services", cfg.Rate, cfg.Duration, data.N)
	var mu sync.Mutex // guards slots
	rng := rand.New(rand.NewPCG(1, 2))
	// pick chooses an idle slot and what to do with it.
	pick := func() (Instance, string, bool) {
		mu.Lock()
		defer mu.Unlock()
		for range 20 {
			in := Instance{rng.IntN(data.N), rng.IntN(data.M)}
			s := slot(in)
			if s.busy {
				continue
			}
			var kind string
			switch {
			case !s.registered:
				kind = "register"
			case in.Idx > 0 && rng.IntN(2) == 0:
				kind = "deregister"
			default:
				kind = "flip"
			}
			s.busy = true
			return in, kind, true
		}
		return Instance{}, "", false
	}
	type job struct {
		in   Instance
		kind string
	}
	jobs := make(chan job, cfg.Rate)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 { // Consul writes take ~10 ms on a loaded 2-core machine: 500/s needs many in flight
		wg.Go(func() {
			for j := range jobs {
				if err := soakChange(ctx, src, tracker, j.in, j.kind, slot(j.in), &mu); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(cfg.Rate))
	end := time.After(cfg.Duration)
loop:
	for {
		select {
		case <-end:
			break loop
		case err := <-errs:
			tick.Stop()
			close(jobs)
			wg.Wait()
			return nil, err
		case <-tick.C:
			// Catch up on ticks the loaded machine delivered late: the rate
			// is changes per second of wall time, not per tick received.
			due := int(float64(cfg.Rate)*time.Since(start).Seconds()) - res.Changes
			for ; due > 0; due-- {
				in, kind, ok := pick()
				if !ok {
					break
				}
				select {
				case jobs <- job{in, kind}:
					res.Changes++
					res.Kinds[kind]++
					continue
				default: // Consul is behind: skip rather than queue forever
				}
				mu.Lock()
				slot(in).busy = false
				mu.Unlock()
				break
			}
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
	res.ChangeRate = float64(res.Changes) / time.Since(start).Seconds()
	cpu1, _ := CPU(istiod.PID())
	res.CPU = cpu1 - cpu0
	res.ConsulRequests = proxy.Requests() - reqs0
	if m, err := istiod.Metrics(); err == nil {
		res.Goroutines[1], res.HeapBytes[1] = harness.Metric(m, "go_goroutines"), harness.Metric(m, "go_memstats_heap_inuse_bytes")
		res.FullRereads = harness.Metric(m, "pilot_consul_full_rereads_total") - harness.Metric(base, "pilot_consul_full_rereads_total")
	}

	// Converge: every change seen, or istiod's debounce ceiling (10 s) passed
	// several times over.
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		if _, unseen := tracker.Latencies(); unseen == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	lat, unseen := tracker.Latencies()
	res.Latency, res.Unseen = Summarize(lat), unseen
	res.Mismatches, err = compareTruth(ctx, consul.Client, data, tracker, cfg.Watchers)
	if err != nil {
		return nil, err
	}
	time.Sleep(20 * time.Second) // idle: let istiod's push queue and caches drain
	if err := istiod.ForceGC(); err != nil {
		return nil, err
	}
	if m, err := istiod.Metrics(); err == nil {
		res.Goroutines[2], res.HeapBytes[2] = harness.Metric(m, "go_goroutines"), harness.Metric(m, "go_memstats_heap_inuse_bytes")
	}
	res.PeakRSS, _ = PeakRSS(istiod.PID())
	return res, nil
}

// soakChange makes one Consul write and registers what every watcher must see.
func soakChange(ctx context.Context, src *ConsulSource, t *Tracker, in Instance, kind string, s *soakSlot, mu *sync.Mutex) error {
	d := src.Data
	var (
		ops     api.TxnOps
		present bool
	)
	mu.Lock()
	visible := true // whether the write changes what istiod serves
	switch kind {
	case "register":
		ops, present = src.registerOps(in), true
		s.registered, s.healthy = true, true
	case "deregister":
		ops = api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: d.Node(in), Service: api.AgentService{ID: d.ID(in), Service: d.Name(in.Svc)}}}}
		visible = s.healthy // an unhealthy instance is not served: leaving changes nothing
		s.registered, s.healthy = false, false
	case "flip":
		s.healthy = !s.healthy
		present = s.healthy
		status := api.HealthCritical
		if s.healthy {
			status = api.HealthPassing
		}
		ops = api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: src.check(in, status)}}}
	}
	mu.Unlock()
	var seen <-chan struct{}
	if visible {
		seen = t.Expect(d.Cluster(in.Svc), d.Addr(in), present)
	} else {
		done := make(chan struct{})
		close(done)
		seen = done
	}
	if err := src.txn(ctx, ops); err != nil {
		return fmt.Errorf("soak %s %s: %w", kind, d.ID(in), err)
	}
	go func() {
		select {
		case <-seen:
		case <-time.After(time.Minute):
		}
		mu.Lock()
		s.busy = false
		mu.Unlock()
	}()
	return nil
}

// compareTruth checks every watcher's last endpoints against Consul's own
// answer for every service (passing instances only).
func compareTruth(ctx context.Context, client *api.Client, data Dataset, t *Tracker, watchers int) ([]string, error) {
	var out []string
	for i := 0; i < data.N; i++ {
		entries, _, err := client.Health().Service(data.Name(i), "", true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("truth of %s: %w", data.Name(i), err)
		}
		truth := map[string]bool{}
		for _, e := range entries {
			truth[fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)] = true
		}
		for w := 0; w < watchers; w++ {
			got := t.Last(w)[data.Cluster(i)]
			if !sameSet(got, truth) {
				out = append(out, fmt.Sprintf("watcher %d, %s: has %v, Consul has %v", w, data.Name(i), keys(got), keys(truth)))
			}
		}
	}
	return out, nil
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
