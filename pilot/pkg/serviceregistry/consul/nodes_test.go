package consul

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Defect: a node's address or meta changing moves neither the services nor
// the checks index, so no watch woke: instances that take their node's
// address kept the old one, and their locality stayed stale. consul-esm
// registers external nodes like this one and re-registers them when they
// move.
func TestNodeAddressAndMetaChangesReachIstiod(t *testing.T) {
	f := newFixture(t, nil)
	node := func(address, zone string) {
		_, err := f.consul.Client.Catalog().Register(&api.CatalogRegistration{Node: "ext-1", Address: address,
			NodeMeta: map[string]string{"external-node": "true", "zone": zone}}, nil)
		require.NoError(t, err)
	}
	node("127.0.5.1", "z1")
	_, err := f.consul.Client.Catalog().Register(&api.CatalogRegistration{Node: "ext-1", Address: "127.0.5.1",
		NodeMeta: map[string]string{"external-node": "true", "zone": "z1"},
		Service:  &api.AgentService{ID: "db-1", Service: "db", Port: 5432},
		Check:    &api.AgentCheck{CheckID: "db-alive", Name: "alive", Status: api.HealthPassing, ServiceID: "db-1"}}, nil)
	require.NoError(t, err)
	f.waitSynced()
	f.eventuallyEndpoints("db", "127.0.5.1:5432")
	locality := func() string {
		shards, ok := f.istiod.index.ShardsForService("db.service.consul", "consul")
		if !ok {
			return ""
		}
		shards.RLock()
		defer shards.RUnlock()
		for _, eps := range shards.Shards {
			for _, ep := range eps {
				return ep.Locality.Label
			}
		}
		return ""
	}
	// The store is updated just before the push: wait for istiod to hold it.
	require.Eventually(t, func() bool { return locality() == "dc1/z1" }, 10*time.Second, 10*time.Millisecond,
		"istiod holds db's endpoint with its node's zone")

	start := time.Now()
	node("127.0.5.2", "z2") // the node alone: no service or check write
	f.eventuallyEndpoints("db", "127.0.5.2:5432")
	assert.Eventually(t, func() bool { return locality() == "dc1/z2" }, 5*time.Second, 10*time.Millisecond)
	t.Logf("node change reached istiod in %v", time.Since(start))
}
