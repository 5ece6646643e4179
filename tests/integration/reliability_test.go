package integration

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
func waitConverged(t *testing.T, istiod *harness.Istiod, consul *api.Client, s *service) time.Duration {
	t.Helper()
	start := time.Now()
	cluster := fmt.Sprintf("outbound|%d||%s.service.consul", s.port, s.name)
	var truth, view []string
	var truthAt time.Time
	for time.Since(start) < 30*time.Second {
		entries, _, err := consul.Health().Service(s.name, "", true, nil)
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

// Fault 1: Consul is killed for a minute while clients call a service: every
// call keeps succeeding on the last good endpoints, istiod shows the outage
// (metric, warning), and after Consul returns — with its data, and again
// rebuilt from an empty data dir — istiod converges to Consul's truth.
func TestConsulOutage(t *testing.T) {
	c, err := harness.StartConsulServer(t)
	require.NoError(t, err)
	istiod, err := harness.StartIstiod(t, mesh.Kube, c.URL())
	require.NoError(t, err)
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	s := newServiceOn(t, c.Client, "ha", 2, grpcMeta, nil)
	conn, err := x.Dial(s.target())
	require.NoError(t, err)
	defer conn.Close()
	eventuallyServedBy(t, conn, s.id(0), s.id(1))
	p := startProber(t, conn)

	// Churn, then crash once istiod has the final state.
	for range 10 {
		s.setHealth(1, api.HealthWarning)
		s.setHealth(1, api.HealthPassing)
	}
	eventuallyServedBy(t, conn, s.id(0), s.id(1))
	c.Kill()
	require.Eventually(t, func() bool {
		m, _ := istiod.Metrics()
		return strings.Contains(string(m), "pilot_consul_reachable 0")
	}, 10*time.Second, 100*time.Millisecond, "metric shows Consul unreachable")
	assert.Contains(t, istiod.Log(), "keeping the last good state")
	time.Sleep(outageDuration()) // the outage itself
	served := counts(conn, 40)
	if served[s.id(1)] == 0 || served[s.id(0)] == 0 {
		d, _ := harness.ADSDump(istiod.XDSAddr, "default", fmt.Sprintf("outbound|%d||ha.service.consul", s.port))
		t.Logf("served %v; istiod EDS %v", served, harness.EndpointAddrs(d.Endpoints[fmt.Sprintf("outbound|%d||ha.service.consul", s.port)]))
	}
	assert.Equal(t, 0, served["error"])
	assert.Positive(t, served[s.id(0)], "last good endpoints served")
	assert.Positive(t, served[s.id(1)], "last good endpoints served")

	// The claim under test: no call failed while Consul was down.
	p.halt()
	t.Logf("%d calls during churn and the outage, %d failed", p.calls.Load(), p.failures.Load())
	assert.Zero(t, p.failures.Load(), "calls failed: %v", p.lastErr.Load())

	// Back with the same data dir (Consul restores a crashed agent's TTL
	// checks as critical, so the truth is set at once): ha-0 passing, ha-1 critical.
	require.NoError(t, c.Start())
	ready := time.Now()
	s.setHealth(0, api.HealthPassing)
	s.setHealth(1, api.HealthCritical)
	took := waitConverged(t, istiod, c.Client, s)
	t.Logf("outage %v, Consul back with its data: Consul ready -> istiod serves its truth in %v (%v after the catalog showed it)",
		outageDuration(), time.Since(ready), took)
	assert.Less(t, took, 2*time.Second)
	s.setHealth(1, api.HealthPassing)
	eventuallyServedBy(t, conn, s.id(0), s.id(1))

	// Rebuilt Consul: empty data dir, lower indexes, services re-registered;
	// the truth is now ha-0 alone (ha-1 never comes back).
	c.Kill()
	require.NoError(t, c.WipeData())
	require.NoError(t, c.Start())
	ready = time.Now()
	s.register(0, grpcMeta, nil)
	took = waitConverged(t, istiod, c.Client, s)
	t.Logf("Consul rebuilt from an empty data dir: Consul ready -> istiod serves its truth in %v (%v after the catalog showed it)",
		time.Since(ready), took)
	assert.Less(t, took, 2*time.Second)
	eventuallyServedBy(t, conn, s.id(0))

}
