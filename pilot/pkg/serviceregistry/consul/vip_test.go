package consul

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pkg/config/host"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The table depends on the set of hostnames only: any order, any history.
func TestVIPTableIsAFunctionOfTheHostnames(t *testing.T) {
	var hosts []host.Name
	for i := range 40 {
		hosts = append(hosts, host.Name(fmt.Sprintf("svc-%02d.service.consul", i)))
	}
	// 40 hostnames in 62 addresses: many first choices collide.
	want := newVIPTable("240.241.0.0/26")
	want.assign(hosts)
	for range 20 {
		shuffled := slices.Clone(hosts)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := newVIPTable("240.241.0.0/26")
		got.assign(shuffled[:25]) // an earlier listing, then the full one
		got.assign(append(shuffled, shuffled[0]))
		assert.Equal(t, want.byHost, got.byHost)
	}
	vips := map[string]bool{}
	for _, h := range hosts {
		v := want.lookup(h)
		assert.NotContains(t, []string{"", "240.241.0.0", "240.241.0.63"}, v, "no network or broadcast address")
		assert.False(t, vips[v], "%s given twice", v)
		vips[v] = true
	}

	full := newVIPTable("240.241.0.0/30")
	full.assign([]host.Name{"c", "b", "a"})
	assert.ElementsMatch(t, []string{"240.241.0.1", "240.241.0.2"}, []string{full.lookup("a"), full.lookup("b")})
	assert.Equal(t, "", full.lookup("c"), "a full range leaves the last hostnames in order without a VIP")
	assert.Equal(t, 1, full.exhausted)
}

// Defect: VIPs went to colliding services in the order their reads
// completed, so two istiod replicas (or one after a restart) reading the
// same catalog gave some services different VIPs, and a client that
// reconnected to another replica sent new connections for X to Y. Two
// registries read one Consul in different orders (1 and 16 workers) with
// a range small enough for many collisions; a third starts after them.
func TestVIPsAgreeAcrossReplicasAndRestarts(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	for i := range 40 {
		name := fmt.Sprintf("svc-%02d", i)
		require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: name, Name: name,
			Address: fmt.Sprintf("127.0.2.%d", i+1), Port: 80,
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + name, TTL: "1h", Status: api.HealthPassing}}))
	}
	vips := func(workers int) map[string]string {
		f := startRegistry(t, c, func(a *Args) {
			a.Mapping.VIPRange, a.MaxConcurrentRequests = "240.241.0.0/26", workers
		})
		f.waitSynced()
		out := map[string]string{}
		for _, s := range f.reg.Services() {
			out[string(s.Hostname)] = s.DefaultAddress
		}
		require.Len(t, out, 41, "40 services and consul")
		return out
	}
	one, many := vips(1), vips(16)
	assert.Equal(t, one, many, "replicas reading in different orders")
	assert.Equal(t, one, vips(16), "after a restart")
}
