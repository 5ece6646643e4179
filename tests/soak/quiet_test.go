package soak

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// quietFor is how long TestQuietRun stays quiet: PILOT_CONSUL_QUIET, by
// default 70 s (past the blocking-query wait of a minute, the warning and
// sync periods of 30 s); `make test-soak` runs 6 minutes, past the longest
// period of all, the 5-minute cap of a refused service's retries.
func quietFor(t *testing.T) time.Duration {
	v := os.Getenv("PILOT_CONSUL_QUIET")
	if v == "" {
		return 70 * time.Second
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "PILOT_CONSUL_QUIET")
	return d
}

// A quiet stretch in real time, with istiod's defaults: istiod keeps
// running (the pinpoint loop's idle timer used to panic it after an hour,
// when it ran), costs Consul only its watches' timeouts, holds its goroutines flat, and
// a change after the quiet stretch reaches clients at once.
func TestQuietRun(t *testing.T) {
	quiet := quietFor(t)
	consul, err := harness.StartConsul(t)
	require.NoError(t, err)
	kube, err := harness.StartKube(t)
	require.NoError(t, err)
	proxy, err := harness.StartFaultProxy(t, consul.URL())
	require.NoError(t, err)
	agent := consul.Client.Agent()
	for i := range 20 {
		name := fmt.Sprintf("quiet-%02d", i)
		require.NoError(t, agent.ServiceRegister(&api.AgentServiceRegistration{ID: name, Name: name,
			Address: fmt.Sprintf("127.0.8.%d", i+1), Port: 80,
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + name, TTL: "24h", Status: api.HealthPassing}}))
	}
	istiod, err := harness.StartIstiod(t, kube, proxy.URL)
	require.NoError(t, err)
	const cluster = "outbound|80||quiet-07.service.consul"
	endpoints := func() []string {
		d, err := harness.ADSDump(istiod.XDSAddr, "default", cluster)
		if err != nil {
			return nil
		}
		return harness.EndpointAddrs(d.Endpoints[cluster])
	}
	require.Eventually(t, func() bool { return slices.Equal(endpoints(), []string{"127.0.8.8:80"}) }, 30*time.Second,
		100*time.Millisecond)
	// Caught up: every service is watched on its own (21 services, with
	// Consul's own, fit the connection budget over plain HTTP) and no read
	// is pending.
	require.Eventually(t, func() bool {
		b, err := istiod.Debug("/debug/consulz?service=-")
		var v struct {
			Registries []struct {
				Consul struct {
					Watch          string `json:"watch"`
					ServiceWatches int    `json:"serviceWatches"`
				} `json:"consul"`
				Counts struct {
					PendingReads int `json:"pendingReads"`
				} `json:"counts"`
			} `json:"registries"`
		}
		return err == nil && json.Unmarshal(b, &v) == nil && len(v.Registries) == 1 &&
			v.Registries[0].Consul.Watch == "services" && v.Registries[0].Consul.ServiceWatches == 21 &&
			v.Registries[0].Counts.PendingReads == 0
	}, 30*time.Second, 100*time.Millisecond)
	before, goroutinesBefore := proxy.Requests(), goroutines(t, istiod)

	start := time.Now()
	for time.Since(start) < quiet {
		time.Sleep(5 * time.Second)
		require.Falsef(t, istiod.Exited(), "istiod exited during the quiet run:\n%s", istiod.Tail(40))
	}
	requests := proxy.Requests() - before
	// 21 service watches, the listing and the restore sentinel, each
	// timing out once per wait (a minute over plain HTTP).
	const watches = 21 + 2
	limit := watches*(int64(quiet/time.Minute)+1) + watches
	t.Logf("quiet %v: %d Consul requests (limit %d); istiod goroutines %d -> %d", quiet, requests, limit,
		goroutinesBefore, goroutines(t, istiod))
	assert.LessOrEqual(t, requests, limit)
	assert.LessOrEqual(t, goroutines(t, istiod), goroutinesBefore+10, "no goroutine growth")
	assert.NotContains(t, istiod.Log(), "panic", "nothing panicked, recovered or not")

	flip := time.Now()
	require.NoError(t, agent.UpdateTTL("ttl-quiet-07", "", api.HealthCritical))
	require.Eventually(t, func() bool { return len(endpoints()) == 0 }, 5*time.Second, 20*time.Millisecond)
	t.Logf("a flip after the quiet run reached the client in %v", time.Since(flip).Round(time.Millisecond))
}

// goroutines reads istiod's go_goroutines metric.
func goroutines(t *testing.T, istiod *harness.Istiod) int {
	t.Helper()
	n, err := istiod.Goroutines()
	require.NoError(t, err)
	return n
}
