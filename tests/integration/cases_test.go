package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

var grpcMeta = map[string]string{"protocol": "grpc"}

// Case 1: a gRPC call through xDS reaches a Consul-registered instance.
func TestBasicCallReachesConsulInstance(t *testing.T) {
	s := newService(t, "basic", 1, grpcMeta, nil)
	c := dial(t, s.target())
	eventuallyServedBy(t, c, s.id(0))

	// The registry's metrics are exported on istiod's monitoring port.
	m, err := mesh.Istiod.Metrics()
	require.NoError(t, err)
	for _, want := range []string{"pilot_consul_reachable 1", "pilot_consul_services ", "pilot_consul_endpoints ",
		"pilot_consul_requests_total ", "pilot_consul_change_to_push_seconds_bucket", "pilot_consul_last_sync_timestamp_seconds "} {
		assert.Contains(t, string(m), want)
	}
}

// Case 2: a critical instance stops receiving calls and comes back when passing.
func TestHealthFlipMovesTraffic(t *testing.T) {
	s := newService(t, "flip", 2, grpcMeta, nil)
	c := dial(t, s.target())
	eventuallyServedBy(t, c, s.id(0), s.id(1))

	start := time.Now()
	s.setHealth(1, api.HealthCritical)
	switchTime := waitUntilGone(t, c, s.id(1), start)
	t.Logf("Consul critical -> client stopped calling the instance: %v", switchTime)
	assert.Empty(t, counts(c, 100)[s.id(1)], "critical instance must get no calls")

	start = time.Now()
	s.setHealth(1, api.HealthPassing)
	eventuallyServedBy(t, c, s.id(0), s.id(1))
	t.Logf("Consul passing -> instance served again within %v", time.Since(start))
}

// Case 3: a new instance gets calls; deregistration removes it.
func TestScaleOutAndIn(t *testing.T) {
	s := newService(t, "scale", 1, grpcMeta, nil)
	c := dial(t, s.target())
	eventuallyServedBy(t, c, s.id(0))
	s.add(1, grpcMeta, nil)
	eventuallyServedBy(t, c, s.id(0), s.id(1))
	require.NoError(t, mesh.Consul.Client.Agent().ServiceDeregister(s.id(0)))
	eventuallyServedBy(t, c, s.id(1))
}

// Case 4: DestinationRule subsets on Consul tag labels + a weighted
// VirtualService split, applied to the Kubernetes API, shape real traffic.
func TestSubsetsAndWeightedSplit(t *testing.T) {
	s := newService(t, "reviews", 2, grpcMeta, func(i int) []string { return []string{fmt.Sprintf("version=v%d", i+1)} })
	c := dial(t, s.target())
	eventuallyServedBy(t, c, s.id(0), s.id(1))

	host := "reviews.service.consul"
	cfg := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: %[1]s
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [%[1]s]
  http:
  - route:
    - {destination: {host: %[1]s, subset: v1}, weight: 80}
    - {destination: {host: %[1]s, subset: v2}, weight: 20}
`, host)
	ctx := context.Background()
	require.NoError(t, mesh.Kube.Apply(ctx, []byte(cfg)))
	t.Cleanup(func() {
		for _, r := range []string{"destinationrules", "virtualservices"} {
			_ = mesh.Kube.Dynamic.Resource(gvr(r)).Namespace("default").Delete(ctx, "reviews", deleteOpts)
		}
	})
	// 1000 calls: v2's share has a standard deviation of ~1.3 points; allow ±6.
	require.Eventually(t, func() bool {
		n := counts(c, 1000)
		share := float64(n[s.id(1)]) / 1000
		t.Logf("split: %v (v2 share %.3f)", n, share)
		return n["error"] == 0 && share > 0.14 && share < 0.26
	}, 60*time.Second, 100*time.Millisecond, "80/20 split never observed")
}

// Case 5: a Kubernetes Service and Consul services are routable through the
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
		ID: "consul-web", Name: "web", Address: hijacker, Port: port, Meta: grpcMeta}))
	t.Cleanup(func() { _ = mesh.Consul.Client.Agent().ServiceDeregister("consul-web") })
	other := newService(t, "other", 1, grpcMeta, nil)

	istiod, err := harness.StartIstiod(t, mesh.Kube, mesh.Consul.URL(), "--consulDomain=svc.cluster.local")
	require.NoError(t, err)
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	require.NoError(t, err)
	web, err := x.Dial(fmt.Sprintf("web.service.svc.cluster.local:%d", port))
	require.NoError(t, err)
	defer web.Close()
	eventuallyServedBy(t, web, "kube-web")
	assert.Equal(t, map[string]int{"kube-web": 50}, counts(web, 50), "the Consul web must never answer")

	oc, err := x.Dial(fmt.Sprintf("other.service.svc.cluster.local:%d", other.port))
	require.NoError(t, err)
	defer oc.Close()
	eventuallyServedBy(t, oc, other.id(0))
}

// Case 6: a Consul service with no protocol meta (TCP by default) still gets
// a cluster, endpoints and an outbound listener on its allocated VIP.
func TestNonHTTPServiceGetsClusterAndListener(t *testing.T) {
	s := newService(t, "db", 1, nil, nil)
	host := "db.service.consul"
	clusterName := fmt.Sprintf("outbound|%d||%s", s.port, host)
	var vip string
	require.Eventually(t, func() bool {
		vip = registryVIP(t, host)
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
		_, hasListener := d.Listeners[fmt.Sprintf("%s_%d", vip, s.port)]
		eps := harness.EndpointAddrs(d.Endpoints[clusterName])
		t.Logf("cluster %v, listener %v, endpoints %v", hasCluster, hasListener, eps)
		return hasCluster && hasListener && len(eps) == 1 && eps[0] == fmt.Sprintf("%s:%d", ip(t, 0), s.port)
	}, 30*time.Second, 200*time.Millisecond)
}

// registryVIP reads a service's address from istiod's /debug/registryz.
func registryVIP(t *testing.T, host string) string {
	b, err := mesh.Istiod.Debug("/debug/registryz")
	if err != nil {
		return ""
	}
	var svcs []struct {
		Hostname       string `json:"hostname"`
		DefaultAddress string `json:"defaultAddress"`
	}
	require.NoError(t, json.Unmarshal(b, &svcs))
	for _, s := range svcs {
		if s.Hostname == host {
			return s.DefaultAddress
		}
	}
	return ""
}
