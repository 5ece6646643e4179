package integration

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Two istiod replicas on one Consul serve the same truth: the same
// services, VIPs and endpoints in /debug/consulz, and the same VIP
// listeners and endpoints to a sidecar (ADS), whatever order each read the
// catalog in (1 worker against 16), and again after one restarts. 60 TCP
// services in a range of 62 addresses collide often: before VIPs were a
// function of the listing, replicas disagreed on some of them.
func TestReplicasAgree(t *testing.T) {
	agent := mesh.Consul.Client.Agent()
	var names []string
	for i := range 60 {
		name := fmt.Sprintf("replica-%02d", i)
		names = append(names, name)
		r := &api.AgentServiceRegistration{ID: name + "-a", Name: name, Address: fmt.Sprintf("127.0.9.%d", 1+i), Port: 9000 + i%5,
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + name + "-a", TTL: "1h", Status: api.HealthPassing}}
		require.NoError(t, agent.ServiceRegister(r))
		t.Cleanup(func() { _ = agent.ServiceDeregister(r.ID) })
	}
	const vipRange = "--consulVIPRange=240.241.0.0/26"
	var replicas []*harness.Istiod
	for _, workers := range []string{"1", "16"} {
		istiod, err := harness.StartIstiod(t, mesh.Kube, mesh.Consul.URL(), vipRange, "--consulMaxConcurrentRequests="+workers)
		require.NoError(t, err)
		replicas = append(replicas, istiod)
	}
	// Endpoints as a sidecar receives them, for a few of the services.
	var clusters []string
	for _, i := range []int{0, 7, 21, 42, 59} {
		clusters = append(clusters, fmt.Sprintf("outbound|%d||%s.service.consul", 9000+i%5, names[i]))
	}
	compare := func(when string) {
		t.Helper()
		var views []string
		var listeners [][]string
		var endpoints []map[string][]string
		for _, r := range replicas {
			var v string
			require.Eventually(t, func() bool {
				v = servedView(t, r, names)
				return strings.Count(v, "\n") == len(names)
			}, 30*time.Second, 100*time.Millisecond, "%s: every service served", when)
			views = append(views, v)
			d, err := harness.ADSDump(r.XDSAddr, "default", clusters...)
			require.NoError(t, err)
			eps := map[string][]string{}
			for _, c := range clusters {
				eps[c] = harness.EndpointAddrs(d.Endpoints[c])
				require.Len(t, eps[c], 1, "%s: %s", when, c)
			}
			endpoints = append(endpoints, eps)
			var ls []string
			for name := range d.Listeners {
				if strings.HasPrefix(name, "240.241.0.") {
					ls = append(ls, name)
				}
			}
			sort.Strings(ls)
			listeners = append(listeners, ls)
		}
		assert.Equal(t, views[0], views[1], "%s: /debug/consulz of the two replicas", when)
		assert.Len(t, listeners[0], len(names)+1, "%s: a VIP listener per service (and Consul's own)", when)
		assert.Equal(t, listeners[0], listeners[1], "%s: the VIP listeners sidecars get", when)
		assert.Equal(t, endpoints[0], endpoints[1], "%s: the endpoints sidecars get", when)
	}
	compare("both started")
	replicas[1].Stop()
	require.NoError(t, replicas[1].Start())
	compare("after a restart")
}

// servedView is what an istiod serves for names (harness.ServedView).
func servedView(t *testing.T, istiod *harness.Istiod, names []string) string {
	t.Helper()
	b, err := istiod.Debug("/debug/consulz")
	require.NoError(t, err)
	v, err := harness.ServedView(b, func(name string) bool { return slices.Contains(names, name) })
	require.NoError(t, err, "%s", b)
	return v
}
