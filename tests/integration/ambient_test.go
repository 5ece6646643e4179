package integration

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"istio.io/istio/pkg/workloadapi"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// With PILOT_ENABLE_AMBIENT=true, the patched istiod's ambient index serves
// Consul services and their healthy instances over WDS, as ztunnel
// receives them: a real delta-xDS client subscribed to istio.workload.Address.
func TestAmbientWDS(t *testing.T) {
	istiod, err := harness.NewIstiod(t, mesh.Kube, mesh.Consul.URL())
	require.NoError(t, err)
	istiod.Env = append(istiod.Env, "PILOT_ENABLE_AMBIENT=true")
	require.NoError(t, istiod.Start())
	var mu sync.Mutex
	var applied []string // resource names as they arrive ("-name" for a removal)
	wds, err := harness.StartWDSClient(t, istiod.XDSAddr, func(name string, a *workloadapi.Address) {
		mu.Lock()
		defer mu.Unlock()
		if a == nil {
			name = "-" + name
		}
		applied = append(applied, name)
	})
	require.NoError(t, err)
	appliedSince := func(n int) []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(applied[n:])
	}
	mark := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(applied)
	}

	agent := mesh.Consul.Client.Agent()
	for _, r := range []api.AgentServiceRegistration{
		{ID: "ambient-1", Name: "ambient", Address: "127.0.0.71", Port: 8080, Meta: map[string]string{
			"protocol": "http", "service-account": "ambient", "tls-mode": "istio", "tunnel": "http", "zone": "z1"}},
		{ID: "ambient-2", Name: "ambient", Address: "127.0.0.72", Port: 8080},
	} {
		r.Check = &api.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "1h", Status: api.HealthPassing}
		require.NoError(t, agent.ServiceRegister(&r))
		t.Cleanup(func() { _ = agent.ServiceDeregister(r.ID) })
	}
	const ns, hostname = "consul", "ambient.service.consul"
	byAddr := func() map[string]*workloadapi.Workload {
		out := map[string]*workloadapi.Workload{}
		for _, w := range wds.WorkloadsOf(ns, hostname) {
			if len(w.Addresses) == 1 {
				a, _ := netip.AddrFromSlice(w.Addresses[0])
				out[a.String()] = w
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return wds.Service(ns, hostname) != nil && len(byAddr()) == 2 },
		60*time.Second, 100*time.Millisecond, "WDS: the service and both instances (stream error: %v)", wds.Err())

	svc := wds.Service(ns, hostname)
	vip := consulz(t, istiod, "ambient").Registries[0].Services[0].VIP
	require.Len(t, svc.Addresses, 1)
	gotVIP, _ := netip.AddrFromSlice(svc.Addresses[0].Address)
	assert.Equal(t, vip, gotVIP.String(), "the same VIP as sidecars get")
	require.Len(t, svc.Ports, 1)
	assert.Equal(t, uint32(8080), svc.Ports[0].ServicePort)

	meshed, plain := byAddr()["127.0.0.71"], byAddr()["127.0.0.72"]
	assert.Equal(t, "ambient", meshed.ServiceAccount)
	assert.Equal(t, ns, meshed.Namespace)
	assert.Equal(t, workloadapi.TunnelProtocol_HBONE, meshed.TunnelProtocol, "meta tunnel=http")
	assert.Equal(t, "dc1", meshed.Locality.GetRegion())
	assert.Equal(t, "z1", meshed.Locality.GetZone())
	assert.Equal(t, workloadapi.TunnelProtocol_NONE, plain.TunnelProtocol, "plaintext without the meta")
	assert.Equal(t, "", plain.ServiceAccount)
	assert.Equal(t, uint32(8080), meshed.Services[ns+"/"+hostname].Ports[0].TargetPort)

	// /debug/ambientz lists the service and its workloads.
	b, err := istiod.Debug("/debug/ambientz")
	require.NoError(t, err)
	z, err := harness.ParseAmbientz(b, ns, hostname)
	require.NoError(t, err)
	assert.Equal(t, harness.Ambientz{Listed: true, Workloads: []string{"127.0.0.71", "127.0.0.72"}}, z)

	// A health flip is one WDS resource: the workload's removal, nothing else.
	flipped := byAddr()["127.0.0.72"].Uid
	before := mark()
	require.NoError(t, agent.UpdateTTL("ttl-ambient-2", "", api.HealthCritical))
	require.Eventually(t, func() bool { _, ok := byAddr()["127.0.0.72"]; return !ok && len(byAddr()) == 1 },
		20*time.Second, 50*time.Millisecond, "a health flip removes the workload")
	assert.Equal(t, []string{"-" + flipped}, appliedSince(before), "only the flipped workload changes")

	require.NoError(t, agent.ServiceDeregister("ambient-1"))
	require.NoError(t, agent.ServiceDeregister("ambient-2"))
	require.Eventually(t, func() bool { return wds.Service(ns, hostname) == nil && len(byAddr()) == 0 },
		20*time.Second, 50*time.Millisecond, "deregistration removes everything")
	require.NoError(t, wds.Err())
}

// A Consul service whose instances are tagged istio.io/use-waypoint=<name>
// is bound to that waypoint, as a labelled ServiceEntry is: ztunnel gets the
// service with the waypoint's address. Its own kube-apiserver, with the
// Gateway API CRDs and a waypoint Gateway istiod itself deploys and
// addresses.
func TestAmbientWaypoint(t *testing.T) {
	ctx := context.Background()
	kube, err := harness.StartKube(t)
	require.NoError(t, err)
	require.NoError(t, kube.InstallGatewayAPI(ctx))
	require.NoError(t, kube.EnsureNamespace(ctx, "consul"))
	istiod, err := harness.NewIstiod(t, kube, mesh.Consul.URL())
	require.NoError(t, err)
	istiod.Env = append(istiod.Env, "PILOT_ENABLE_AMBIENT=true")
	require.NoError(t, istiod.Start())
	// The Service and its endpoint stand for what istiod's gateway
	// deployment controller and the waypoint's pod would bring (the local
	// tier has neither injector templates nor a kubelet); istiod programs
	// the Gateway from them.
	require.NoError(t, kube.Apply(ctx, []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: consul, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: consul, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec:
  ports: [{name: mesh, port: 15008, appProtocol: all}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: wp, namespace: consul, labels: {kubernetes.io/service-name: wp}}
addressType: IPv4
endpoints: [{addresses: [198.19.250.76], conditions: {ready: true}}]
ports: [{name: mesh, port: 15008}]
`)))
	wds, err := harness.StartWDSClient(t, istiod.XDSAddr, nil)
	require.NoError(t, err)

	agent := mesh.Consul.Client.Agent()
	for _, r := range []api.AgentServiceRegistration{
		{ID: "waypointed-1", Name: "waypointed", Address: "127.0.0.73", Port: 8080, Tags: []string{"istio.io/use-waypoint=wp"}},
		{ID: "waypointed-2", Name: "waypointed", Address: "127.0.0.74", Port: 8080, Tags: []string{"istio.io/use-waypoint=wp"}},
		{ID: "unbound-1", Name: "unbound", Address: "127.0.0.75", Port: 8080},
	} {
		require.NoError(t, agent.ServiceRegister(&r))
		t.Cleanup(func() { _ = agent.ServiceDeregister(r.ID) })
	}
	const ns = "consul"
	var svc *workloadapi.Service
	require.Eventually(t, func() bool {
		svc = wds.Service(ns, "waypointed.service.consul")
		return svc != nil && svc.Waypoint != nil
	}, 60*time.Second, 100*time.Millisecond, "WDS: the service bound to its waypoint (stream error: %v)", wds.Err())
	gw, err := kube.Dynamic.Resource(gatewayResource).Namespace(ns).Get(ctx, "wp", metav1.GetOptions{})
	require.NoError(t, err)
	addrs, _, _ := unstructured.NestedSlice(gw.Object, "status", "addresses")
	var assigned []string
	for _, a := range addrs {
		assigned = append(assigned, a.(map[string]any)["value"].(string))
	}
	assert.Equal(t, "wp.consul.svc.cluster.local", svc.Waypoint.GetHostname().GetHostname())
	assert.Equal(t, ns, svc.Waypoint.GetHostname().GetNamespace())
	assert.Contains(t, assigned, svc.Waypoint.GetHostname().GetHostname(), "an address istiod assigned to Gateway wp")
	assert.Equal(t, uint32(15008), svc.Waypoint.HboneMtlsPort)
	require.NotNil(t, wds.Service(ns, "unbound.service.consul"))
	assert.Nil(t, wds.Service(ns, "unbound.service.consul").Waypoint, "no tag, no waypoint")

	// Issue #22 (defect 13): the waypoint binding is a status condition
	// istiod writes to ServiceEntries; the Consul ones are not in the API
	// server, and each write there was a 404, retried five times per
	// event and again at every leader change. A Kubernetes ServiceEntry
	// bound to the same waypoint afterwards gets its status written: by
	// then the Consul one's write would have come, and none may.
	require.NoError(t, kube.Apply(ctx, []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: anchor
  namespace: default
  labels: {istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: consul}
spec:
  hosts: [anchor.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
`)))
	var writes []harness.StatusWrite
	require.Eventually(t, func() bool {
		writes, err = kube.StatusWrites()
		return err == nil && slices.ContainsFunc(writes, func(w harness.StatusWrite) bool { return w.Name == "anchor" && w.Code == 200 })
	}, 30*time.Second, 100*time.Millisecond, "istiod writes the anchor's status (%v)", err)
	for _, w := range writes {
		assert.NotEqual(t, ns, w.Namespace, "a status write to a Consul object: %+v", w)
	}
	t.Logf("%d status writes to ServiceEntries/WorkloadEntries: %+v", len(writes), writes)
}

var gatewayResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
