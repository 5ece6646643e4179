package integration

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// prober calls a channel continuously and counts failed calls.
type prober struct {
	calls, failures atomic.Int64
	lastErr         atomic.Value
	stop            chan struct{}
	wg              sync.WaitGroup
}

func startProber(t *testing.T, c *harness.Conn) *prober {
	p := &prober{stop: make(chan struct{})}
	p.wg.Go(func() {
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			p.calls.Add(1)
			if _, err := c.Call(2 * time.Second); err != nil {
				p.failures.Add(1)
				p.lastErr.Store(err.Error())
			}
		}
	})
	t.Cleanup(p.halt)
	return p
}

func (p *prober) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	p.wg.Wait()
}

func outageDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("PILOT_CONSUL_OUTAGE")); err == nil {
		return d
	}
	return 60 * time.Second
}

// waitConverged polls until istiod's EDS for the service (an ADS client's
// view) equals Consul's truth (its passing instances in the catalog). It
// returns how long istiod took from the moment Consul's catalog showed that
// truth (Consul's own agent-to-catalog sync after a restart is not ours).
func waitConverged(t *testing.T, istiod *harness.Istiod, consul *api.Client, s *e2e.Service) time.Duration {
	t.Helper()
	start := time.Now()
	cluster := fmt.Sprintf("outbound|%d||%s.service.consul", s.Port, s.Name)
	var truth, view []string
	var truthAt time.Time
	for time.Since(start) < convergeLimit {
		entries, _, err := consul.Health().Service(s.Name, "", true, nil)
		if err == nil {
			now := []string{}
			for _, e := range entries {
				now = append(now, fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port))
			}
			sort.Strings(now)
			if !slices.Equal(now, truth) || truthAt.IsZero() {
				truth, truthAt = now, time.Now()
			}
			if d, err := harness.ADSDump(istiod.XDSAddr, "default", cluster); err == nil {
				view = harness.EndpointAddrs(d.Endpoints[cluster])
				sort.Strings(view)
				if len(truth) > 0 && slices.Equal(truth, view) {
					return time.Since(truthAt)
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("istiod never converged: Consul %v, istiod %v", truth, view)
	return 0
}

// convergeLimit is how long waitConverged waits: beyond every bound.
const convergeLimit = agentPausedBound + 10*time.Second

// reconvergeBound is issue #6's target. Until the registry hedged its
// non-blocking reads (watch.go), 4 of 24 samples took 2.4-8 s: requests sent
// while Consul was starting stayed unanswered for 7-15 s after it answered
// new ones (found with the consul:debug logs this istiod runs with).
const reconvergeBound = 2 * time.Second

// Fault 1: Consul is killed for a minute while clients call a service: every
// call keeps succeeding on the last good endpoints, istiod shows the outage
// (metric, warning), and after Consul returns — with its data, and again
// rebuilt from an empty data dir — istiod converges to Consul's truth.
func TestConsulOutage(t *testing.T) {
	c, err := harness.StartConsul(t, func(c *harness.ConsulConfig) { c.Server = true })
	require.NoError(t, err)
	istiod, err := harness.StartIstiod(t, mesh.Kube, c.URL(), "--log_output_level=default:info,consul:debug")
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("istiod log tail:\n%s", istiod.Tail(60))
		}
	})
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	s := e2e.NewService(t, &e2e.Local{ConsulClient: c.Client}, "ha", 2, e2e.GRPCMeta, nil)
	conn, err := x.Dial(s.Target())
	require.NoError(t, err)
	defer conn.Close()
	e2e.EventuallyServedBy(t, conn, s.ID(0), s.ID(1))
	p := startProber(t, conn)

	// Churn, then crash once istiod provably has the final state: an instance
	// registered after the last flip is in its view only if istiod read Consul
	// after that flip (a client can still see pre-churn endpoints for a
	// debounce interval, so calls alone cannot tell).
	for range 10 {
		s.SetHealth(1, api.HealthWarning)
		s.SetHealth(1, api.HealthPassing)
	}
	s.Add(2, e2e.GRPCMeta, nil)
	waitConverged(t, istiod, c.Client, s)
	e2e.EventuallyServedBy(t, conn, s.ID(0), s.ID(1), s.ID(2))
	c.Kill()
	require.Eventually(t, func() bool {
		m, _ := istiod.Metrics()
		_, n := harness.Samples(m, "pilot_consul_reachable", `cluster="consul"`)
		return n == 1 && harness.Metric(m, "pilot_consul_reachable", `cluster="consul"`) == 0 &&
			harness.Metric(m, "pilot_consul_last_error_timestamp_seconds", `cluster="consul"`) > 0
	}, 10*time.Second, 100*time.Millisecond, "metrics show Consul unreachable, with the time of the last error")
	assert.Contains(t, istiod.Log(), "keeping the last good state")
	time.Sleep(outageDuration()) // the outage itself
	served := e2e.Counts(conn, 40)
	assert.Equal(t, 0, served["error"])
	for i := range 3 {
		assert.Positive(t, served[s.ID(i)], "last good endpoints served")
	}

	// The claim under test: no call failed while Consul was down.
	p.halt()
	t.Logf("%d calls during churn and the outage, %d failed", p.calls.Load(), p.failures.Load())
	assert.Zero(t, p.failures.Load(), "calls failed: %v", p.lastErr.Load())

	// Back with the same data dir (Consul restores a crashed agent's TTL
	// checks as critical, so the truth is set at once): ha-0 passing, ha-1 critical.
	require.NoError(t, c.Start())
	ready := time.Now()
	s.SetHealth(0, api.HealthPassing)
	s.SetHealth(1, api.HealthCritical)
	s.SetHealth(2, api.HealthPassing)
	took := waitConverged(t, istiod, c.Client, s)
	t.Logf("outage %v, Consul back with its data: Consul ready -> istiod serves its truth in %v (%v after the catalog showed it)",
		outageDuration(), time.Since(ready), took)
	assert.Less(t, took, reconvergeBound)
	s.SetHealth(1, api.HealthPassing)
	e2e.EventuallyServedBy(t, conn, s.ID(0), s.ID(1), s.ID(2))

	// Rebuilt Consul: empty data dir, lower indexes, services re-registered;
	// the truth is now ha-0 alone (ha-1 and ha-2 never come back).
	c.Kill()
	require.NoError(t, c.WipeData())
	require.NoError(t, c.Start())
	ready = time.Now()
	s.Register(0, e2e.GRPCMeta, nil)
	took = waitConverged(t, istiod, c.Client, s)
	t.Logf("Consul rebuilt from an empty data dir: Consul ready -> istiod serves its truth in %v (%v after the catalog showed it)",
		time.Since(ready), took)
	assert.Less(t, took, reconvergeBound)
	e2e.EventuallyServedBy(t, conn, s.ID(0))

}

// goroutines reads istiod's go_goroutines metric.
func goroutines(t *testing.T, istiod *harness.Istiod) int {
	t.Helper()
	n, err := istiod.Goroutines()
	require.NoError(t, err)
	return n
}

// Fault 3: a slow and failing Consul (3 s delays, 429, 500, 503, connection
// resets) behind a fault-injecting proxy: istiod backs off, stays within its
// connection bound, piles up no goroutines, keeps serving the last good
// endpoints, and follows Consul again once the faults stop.
func TestSlowAndFailingConsul(t *testing.T) {
	proxy, err := harness.StartFaultProxy(t, mesh.Consul.URL())
	require.NoError(t, err)
	istiod, err := harness.StartIstiod(t, mesh.Kube, proxy.URL)
	require.NoError(t, err)
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	s := e2e.NewService(t, local, "flaky", 2, e2e.GRPCMeta, nil)
	conn, err := x.Dial(s.Target())
	require.NoError(t, err)
	defer conn.Close()
	e2e.EventuallyServedBy(t, conn, s.ID(0), s.ID(1))
	baseline := goroutines(t, istiod)

	for _, mode := range []string{"delay", "429", "500", "503", "reset"} {
		before := proxy.Requests()
		proxy.Set(mode)
		s.SetHealth(1, api.HealthWarning) // a change Consul has, istiod cannot read
		time.Sleep(5 * time.Second)
		n := proxy.Requests() - before
		t.Logf("%-5s: %d requests in 5s, %d goroutines (baseline %d)", mode, n, goroutines(t, istiod), baseline)
		assert.Less(t, n, int64(50), "%s: the gate bounds retries (10 requests/s)", mode)
		served := e2e.Counts(conn, 20)
		assert.Zero(t, served["error"], mode)
		if mode == "delay" {
			// Slow is not down: the delayed answers still bring the change.
			e2e.EventuallyServedBy(t, conn, s.ID(0))
		} else {
			assert.Positive(t, served[s.ID(1)], "%s: last good endpoints kept", mode)
		}
		proxy.Set("")
		s.SetHealth(1, api.HealthPassing)
		e2e.EventuallyServedBy(t, conn, s.ID(0), s.ID(1))
	}
	assert.LessOrEqual(t, goroutines(t, istiod), baseline+20, "no goroutine pile-up")
	assert.LessOrEqual(t, proxy.PeakConnections(), int64(32+4), "connections within --consulMaxConcurrentRequests+4")
	// Each outage is logged as a warning naming Consul's answer.
	assert.Contains(t, istiod.Log(), "Unexpected response code: 429 (injected fault); keeping the last good state")
	// Faults over: a change made now reaches the client.
	s.SetHealth(1, api.HealthCritical)
	e2e.EventuallyServedBy(t, conn, s.ID(0))
}

// Fault 4: istiod restarts while Consul churns; afterwards its view equals
// Consul's truth for every churned service.
func TestIstiodRestartDuringChurn(t *testing.T) {
	istiod, err := harness.StartIstiod(t, mesh.Kube, mesh.Consul.URL())
	require.NoError(t, err)
	var svcs []*e2e.Service
	for i := range 10 {
		svcs = append(svcs, e2e.NewService(t, local, fmt.Sprintf("churn-%d", i), 2, e2e.GRPCMeta, nil))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flips atomic.Int64
	wg.Go(func() {
		statuses := []string{api.HealthPassing, api.HealthCritical, api.HealthWarning}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			s := svcs[i%len(svcs)]
			if err := mesh.Consul.Client.Agent().UpdateTTL("ttl-"+s.ID(i%2), "", statuses[(i/len(svcs))%3]); err == nil {
				flips.Add(1)
			}
		}
	})
	time.Sleep(2 * time.Second)
	istiod.Stop()
	time.Sleep(time.Second) // churn goes on while istiod is down
	require.NoError(t, istiod.Start())
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d health changes across %d services around the restart", flips.Load(), len(svcs))
	for _, s := range svcs {
		// A service with no passing instance has no endpoints on either side.
		entries, _, err := mesh.Consul.Client.Health().Service(s.Name, "", true, nil)
		require.NoError(t, err)
		if len(entries) == 0 {
			s.SetHealth(0, api.HealthPassing)
		}
		waitConverged(t, istiod, mesh.Consul.Client, s)
	}
}
