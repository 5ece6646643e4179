package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
	"github.com/pilot-consul/pilot-consul/tests/observability"
)

// The shared end-to-end cases (tests/e2e) on the local mesh; tests/e2e/kind
// runs the same cases on a kind cluster with Envoy sidecars.
func TestSharedCases(t *testing.T) {
	for _, c := range e2e.Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, local) })
	}
}

// The registry's metrics are exported on istiod's monitoring port, each
// with the registry's cluster label, and every metric the dashboard and the
// alerting rules of build/install/observability use is among them.
func TestRegistryMetricsExported(t *testing.T) {
	s := e2e.NewService(t, local, "metrics", 1, e2e.GRPCMeta, nil)
	e2e.EventuallyServedBy(t, local.Dial(t, s.Target()), s.ID(0))
	s.SetHealth(0, api.HealthCritical) // a change, so the push latency histogram has a sample
	s.SetHealth(0, api.HealthPassing)
	e2e.EventuallyServedBy(t, local.Dial(t, s.Target()), s.ID(0))
	m, err := mesh.Istiod.Metrics()
	require.NoError(t, err)
	assert.Equal(t, 1.0, harness.Metric(m, "pilot_consul_reachable", `cluster="consul"`))
	assert.Equal(t, 1.0, harness.Metric(m, "pilot_consul_synced", `cluster="consul"`))
	assert.Positive(t, harness.Metric(m, "pilot_consul_services", `cluster="consul"`))
	used, err := observability.UsedMetrics(harness.Root())
	require.NoError(t, err)
	require.NotEmpty(t, used)
	for _, name := range used {
		_, n := harness.Samples(m, name, `cluster="consul"`)
		assert.Positive(t, n, "the dashboard or an alert uses %s; istiod exports no such series for registry consul", name)
	}
	t.Logf("%d metrics used by the dashboard and the alerts, all exported", len(used))
}

// Local only (a netns test host, a second istiod): a Kubernetes Service and Consul services are routable through the
// same istiod, and a Consul service with the same hostname does not hijack
// the Kubernetes one. The collision needs Consul hostnames in the cluster
// domain, so this case runs its own istiod with --consulDomain=svc.cluster.local:
// Consul "web" -> web.service.svc.cluster.local = Kubernetes Service web in
// namespace "service".
func TestCoexistenceKubernetesWins(t *testing.T) {
	ctx := context.Background()
	th, err := harness.NewTestHost(t)
	require.NoError(t, err)
	port := 7070
	_, err = th.Start(t, "kube-web", os.Args[0], nil, []string{fmt.Sprintf("PILOT_CONSUL_WORKLOAD=kube-web %s %d", th.IP, port)})
	require.NoError(t, err)

	require.NoError(t, mesh.Kube.EnsureNamespace(ctx, "service"))
	require.NoError(t, mesh.Kube.Apply(ctx, []byte(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: service}
spec:
  ports: [{name: grpc, port: %[1]d, targetPort: %[1]d, appProtocol: grpc}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-local
  namespace: service
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: pilot-consul-tests}
addressType: IPv4
endpoints: [{addresses: [%[2]s], conditions: {ready: true}}]
ports: [{name: grpc, port: %[1]d, protocol: TCP}]
`, port, th.IP))))
	t.Cleanup(func() {
		_ = mesh.Kube.Client.CoreV1().Services("service").Delete(ctx, "web", deleteOpts)
		_ = mesh.Kube.Client.DiscoveryV1().EndpointSlices("service").Delete(ctx, "web-local", deleteOpts)
	})

	// Consul: a "web" on the same port (would hijack) and an unrelated "other".
	hijacker := fmt.Sprintf("127.0.%d.%d", 250, 10)
	_, err = harness.StartWorkload(t, "consul-web", hijacker, port)
	require.NoError(t, err)
	require.NoError(t, mesh.Consul.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "consul-web", Name: "web", Address: hijacker, Port: port, Meta: e2e.GRPCMeta}))
	t.Cleanup(func() { _ = mesh.Consul.Client.Agent().ServiceDeregister("consul-web") })
	other := e2e.NewService(t, local, "other", 1, e2e.GRPCMeta, nil)

	istiod, err := harness.StartIstiod(t, mesh.Kube, mesh.Consul.URL(), "--consulDomain=svc.cluster.local")
	require.NoError(t, err)
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	web, err := x.Dial(fmt.Sprintf("web.service.svc.cluster.local:%d", port))
	require.NoError(t, err)
	defer web.Close()
	e2e.EventuallyServedBy(t, web, "kube-web")
	assert.Equal(t, map[string]int{"kube-web": 50}, e2e.Counts(web, 50), "the Consul web must never answer")
	assert.Equal(t, []string{"web.service.svc.cluster.local"}, consulz(t, istiod, "web").Registries[0].HiddenByKubernetes,
		"/debug/consulz says why the Consul web is not served")

	oc, err := x.Dial(fmt.Sprintf("other.service.svc.cluster.local:%d", other.Port))
	require.NoError(t, err)
	defer oc.Close()
	e2e.EventuallyServedBy(t, oc, other.ID(0))
}

// Local only (reads istiod's xDS directly): a Consul service with no protocol meta (TCP by default) still gets
// a cluster, endpoints and an outbound listener on its allocated VIP.
func TestNonHTTPServiceGetsClusterAndListener(t *testing.T) {
	s := e2e.NewService(t, local, "db", 1, nil, nil)
	host := "db.service.consul"
	clusterName := fmt.Sprintf("outbound|%d||%s", s.Port, host)
	var vip string
	require.Eventually(t, func() bool {
		vip, _ = mesh.Istiod.ServiceAddress(host)
		return vip != ""
	}, 20*time.Second, 100*time.Millisecond, "%s never in /debug/registryz", host)
	assert.True(t, strings.HasPrefix(vip, "240.241."), "VIP %s from the default range", vip)

	require.Eventually(t, func() bool {
		d, err := harness.ADSDump(mesh.Istiod.XDSAddr, "default", clusterName)
		if err != nil {
			t.Log(err)
			return false
		}
		_, hasCluster := d.Clusters[clusterName]
		_, hasListener := d.Listeners[fmt.Sprintf("%s_%d", vip, s.Port)]
		eps := harness.EndpointAddrs(d.Endpoints[clusterName])
		t.Logf("cluster %v, listener %v, endpoints %v", hasCluster, hasListener, eps)
		return hasCluster && hasListener && len(eps) == 1 && eps[0] == fmt.Sprintf("%s:%d", e2e.IP(t, 0), s.Port)
	}, 30*time.Second, 200*time.Millisecond)
}
