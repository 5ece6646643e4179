package consul

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A removal is never overtaken by a push computed before it. The push of a
// new service's first read is held inside istiod (EDSCacheUpdate) while the
// service is deregistered and the registry sees it go. A removal pushed
// meanwhile from elsewhere would land first and the held push would then
// recreate the endpoint shard and announce an "add" for a service that no
// longer exists. istiod must end with no shard and nothing after the delete.
func TestRemovalIsNeverOvertakenByAnOlderPush(t *testing.T) {
	f := newFixture(t, nil)
	f.waitSynced()
	const hostname = "late.service.consul"
	held, release := make(chan struct{}), make(chan struct{})
	first := true
	f.istiod.hold(func(call, h string) {
		if h != hostname || call != "eds-cache" || !first {
			return
		}
		first = false // only the worker serving "late" gets here
		close(held)
		<-release
	})

	f.register(api.AgentServiceRegistration{ID: "late-1", Name: "late", Address: "127.0.0.91", Port: 80})
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the first read of late was never pushed")
	}
	require.NoError(t, f.consul.Client.Agent().ServiceDeregister("late-1"))
	var goneAt uint64
	require.Eventually(t, func() bool {
		listing, meta, err := f.consul.Client.Catalog().Services(nil)
		_, listed := listing["late"]
		goneAt = meta.LastIndex
		return err == nil && !listed
	}, 10*time.Second, 10*time.Millisecond, "Consul deregistered late")
	require.Eventually(t, func() bool { return f.reg.debugView("-").Consul.CatalogIndex >= goneAt },
		10*time.Second, 10*time.Millisecond, "the registry saw late leave the catalog")
	// The registry knows late is gone while its push is in flight. No
	// removal may reach istiod before that push ends (a removal pushed from
	// elsewhere arrives within milliseconds; give it a second).
	assert.Never(t, func() bool { return slices.Contains(f.istiod.calls(hostname), "svc delete") },
		time.Second, 10*time.Millisecond, "a removal overtook the push in flight: %v", f.istiod)
	close(release)

	want := []string{"eds-cache", "svc add", "handler add", "svc delete", "handler delete"}
	require.Eventually(t, func() bool { return slices.Equal(want, f.istiod.calls(hostname)) }, 10*time.Second, 10*time.Millisecond,
		"istiod's calls about late, in order: the held push, then the removal; have %v", f.istiod)
	assert.False(t, f.istiod.hasShard(hostname, "consul"), "no stale endpoint shard")
	assert.Nil(t, f.reg.GetService(hostname))
}
