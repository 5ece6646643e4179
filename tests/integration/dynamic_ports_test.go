package integration

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// A Nomad-like job: every allocation of one service listens on a port of its
// own (Nomad's dynamic ports), two of them on one node address, and names
// the service port clients use (meta service-port). Clients reach every
// allocation through that one port, and allocations coming and going are
// endpoint changes only: istiod sends no cluster or listener for them
// (issue #37, 1). Before the meta, each allocation was a service port of
// its own: web.service.consul:<port> reached one allocation, and each one
// that came or went changed the port set, a full push.
func TestDynamicPortsShareOneServicePort(t *testing.T) {
	const name, servicePort = "nomad-web", 8080
	istiod, err := harness.StartIstiod(t, mesh.Kube, mesh.Consul.URL())
	require.NoError(t, err)
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	agent := mesh.Consul.Client.Agent()
	next := 0
	// allocate starts an allocation on a port the kernel picks, on one of two
	// addresses, and registers it as Nomad does (an ID per allocation).
	allocate := func() string {
		id := fmt.Sprintf("_nomad-task-%s-%d", name, next)
		w, err := harness.StartWorkload(t, id, e2e.IP(t, next%2), 0)
		require.NoError(t, err)
		next++
		require.NoError(t, agent.ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: name, Address: w.IP, Port: w.Port,
			Meta:  map[string]string{"protocol": "grpc", "service-port": fmt.Sprint(servicePort)},
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + id, TTL: "1h", Status: api.HealthPassing},
		}))
		t.Cleanup(func() { _ = agent.ServiceDeregister(id) })
		return id
	}
	allocs := []string{allocate(), allocate(), allocate()}

	conn, err := x.Dial(fmt.Sprintf("%s.service.consul:%d", name, servicePort))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	e2e.EventuallyServedBy(t, conn, allocs...)
	counts := e2e.Counts(conn, 300)
	for _, id := range allocs {
		// Round robin over three: a third each; a quarter leaves room for
		// calls a reconnect moves.
		assert.GreaterOrEqual(t, counts[id], 75, "every allocation gets its share: %v", counts)
	}

	before, err := istiod.Metrics()
	require.NoError(t, err)
	const churn = 6
	for range churn {
		allocs = append(allocs, allocate())
		e2e.EventuallyServedBy(t, conn, allocs...)
		require.NoError(t, agent.ServiceDeregister(allocs[0]))
		allocs = allocs[1:]
		e2e.EventuallyServedBy(t, conn, allocs...)
	}
	after, err := istiod.Metrics()
	require.NoError(t, err)
	for _, typ := range []string{"cds", "lds", "rds"} {
		pushes := harness.Metric(after, "pilot_xds_pushes", `type="`+typ+`"`) - harness.Metric(before, "pilot_xds_pushes", `type="`+typ+`"`)
		assert.Zero(t, pushes, "%s pushes while %d allocations came and went", typ, churn)
	}
	eds := harness.Metric(after, "pilot_xds_pushes", `type="eds"`) - harness.Metric(before, "pilot_xds_pushes", `type="eds"`)
	assert.GreaterOrEqual(t, eds, float64(2*churn), "each allocation change reached the client as endpoints")
}
