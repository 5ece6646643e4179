package bench

// per_service.go measures the design peers ship (Higress's and HTNN's
// Consul watchers, Prometheus consul_sd): one blocking query per service,
// each on its own connection, against the same Consul and catalog. No
// istiod runs: what is compared is what each design costs Consul, and how
// soon a change reaches the watcher (not a client: the xDS part is
// istiod's, the same for both).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// perServiceWait is the blocking-query wait those watchers use (Consul's
// default, which both leave in place).
const perServiceWait = 5 * time.Minute

// measureP loads the dataset into a Consul of its own, raised above its
// 200-connections-per-client limit (those designs need one connection per
// service: operators must raise it), and measures one blocking
// /v1/health/service/<name>?passing query per service.
func measureP(parent *harness.ProcessEnv, data Dataset, cfg Config) (Result, error) {
	env := parent.Child()
	defer env.Close()
	consul, err := startConsul(env, func(c *harness.ConsulConfig) { c.MaxConnsPerClient = data.N + 100 })
	if err != nil {
		return Result{}, err
	}
	src := &ConsulSource{Client: consul.Client, Data: data}
	start := time.Now()
	if err := src.Load(context.Background()); err != nil {
		return Result{}, err
	}
	r := Result{Route: RouteP, Services: data.N, PerSvc: data.M, Watchers: 1, LoadSeconds: time.Since(start).Seconds()}
	cfg.Step("%d×%d: loaded %d instances into Consul in %s", data.N, data.M, data.N*data.M, time.Since(start).Round(time.Millisecond))

	counter := &countingTransport{base: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: data.N + 100,
	}}
	client, err := api.NewClient(&api.Config{Address: consul.HTTPAddr, HttpClient: &http.Client{Transport: counter}})
	if err != nil {
		return r, err
	}
	tracker := NewTracker(data, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.Step("%s: starting %d blocking queries", RouteP, data.N)
	start = time.Now()
	done := make(chan struct{})
	for i := range data.N {
		go func() {
			watchService(ctx, client, data, i, tracker)
			done <- struct{}{}
		}()
	}
	defer func() {
		cancel()
		for range data.N {
			<-done
		}
	}()
	select {
	case <-tracker.Synced():
		r.Synced = true
		r.SyncSeconds = time.Since(start).Seconds()
	case <-time.After(cfg.SyncTimeout):
		r.SyncSeconds = cfg.SyncTimeout.Seconds()
		return r, nil
	}
	cfg.Step("%s: every service answered after %.2fs", RouteP, r.SyncSeconds)
	set := setHealth(src.SetHealthy)
	if cfg.Kind == ChurnRegister {
		set = src.SetRegistered
	}
	settle, settled, err := warmUp(ctx, data, tracker, set, 1)
	if err != nil {
		return r, err
	}
	r.SettleSeconds, r.Settled = settle.Seconds(), settled
	if cfg.Idle > 0 {
		cfg.Step("%s: %s idle", RouteP, cfg.Idle)
		if r.ConsulIdle, err = measureConsul(counter, consul, func() error { time.Sleep(cfg.Idle); return nil }); err != nil {
			return r, err
		}
	}
	cfg.Step("%s: churn, %.0f %s changes/s for %s", RouteP, cfg.Rate, cfg.kind(), cfg.Churn)
	churned, err := measureConsul(counter, consul, func() error {
		var err error
		r.Changes, _, err = churnAndDeliver(ctx, data, tracker, set, cfg)
		return err
	})
	if err != nil {
		return r, err
	}
	r.ConsulChurn = churned
	n := float64(max(r.Changes, 1))
	r.ChangeRate = float64(r.Changes) / cfg.Churn.Seconds()
	r.ConsulReqs, r.ConsulPerChg = churned.Requests, float64(churned.Requests)/n
	r.ConsulBytesPerChg, r.ConsulCPUPerChgMs = float64(churned.Bytes)/n, churned.CPUSeconds*1000/n
	r.ConsulPeak = int64(data.N)
	lat, unseen := tracker.Latencies()
	r.Latency, r.Unseen, r.SampleMillis = Summarize(lat), unseen, millis(lat)
	if r.ConsulPeakRSSBytes, err = PeakRSS(consul.PID()); err != nil {
		return r, err
	}
	cfg.Step("%s: %d changes, watch answer p50 %.1fms p99 %.1fms; Consul %.1f requests, %.0f bytes, %.2f ms CPU per change",
		RouteP, r.Changes, r.Latency.P50, r.Latency.P99, r.ConsulPerChg, r.ConsulBytesPerChg, r.ConsulCPUPerChgMs)
	return r, nil
}

// watchService is one peer watcher: a blocking query on the service's
// passing instances, again and again, each answer handed to the tracker
// as watcher 0's view of the service's cluster.
func watchService(ctx context.Context, client *api.Client, data Dataset, i int, t *Tracker) {
	var index uint64
	for ctx.Err() == nil {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: perServiceWait}).WithContext(ctx)
		entries, meta, err := client.Health().Service(data.Name(i), "", true, q)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		addrs := make(map[string]bool, len(entries))
		for _, e := range entries {
			addrs[fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)] = true
		}
		t.observeAddrs(0, data.Cluster(i), addrs, time.Now())
		index = meta.LastIndex
	}
}

// countingTransport counts requests and response bytes.
type countingTransport struct {
	base            http.RoundTripper
	requests, bytes atomic.Int64
}

func (c *countingTransport) Requests() int64 { return c.requests.Load() }
func (c *countingTransport) Bytes() int64    { return c.bytes.Load() }

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	resp, err := c.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = harness.CountBody(resp.Body, &c.bytes)
	return resp, nil
}
