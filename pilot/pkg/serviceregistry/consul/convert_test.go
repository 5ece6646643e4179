package consul

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/config/protocol"
)

func testConverter() *converter {
	return &converter{
		domain: "consul", namespace: "consul", clusterID: "consul",
		defaultProtocol: protocol.TCP, trustDomain: func() string { return "cluster.local" },
	}
}

type reg struct {
	id, node, nodeAddr, addr string
	port                     int
	tags                     []string
	meta, nodeMeta           map[string]string
	status                   string // aggregated check status; "" = no checks
	kind                     api.ServiceKind
	weights                  api.AgentWeights
}

func entry(r reg) *api.ServiceEntry {
	if r.node == "" {
		r.node = "n1"
	}
	if r.weights == (api.AgentWeights{}) {
		r.weights = api.AgentWeights{Passing: 1, Warning: 1}
	}
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: r.node, Address: r.nodeAddr, Datacenter: "dc1", Meta: r.nodeMeta},
		Service: &api.AgentService{ID: r.id, Service: "svc", Kind: r.kind, Address: r.addr, Port: r.port, Tags: r.tags, Meta: r.meta, Weights: r.weights},
	}
	switch r.status {
	case "":
	case "maintenance":
		e.Checks = api.HealthChecks{{CheckID: api.ServiceMaintPrefix + r.id, Status: api.HealthCritical}}
	default:
		e.Checks = api.HealthChecks{{CheckID: "c-" + r.id, Status: r.status}}
	}
	return e
}

// TestMapping mirrors the mapping table of docs/mapping.md row by row.
func TestMapping(t *testing.T) {
	c := testConverter()
	t.Run("hostname is <service>.service.<domain>, namespace configurable", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{entry(reg{id: "a", addr: "10.0.0.1", port: 80})})
		require.NotNil(t, out.service)
		assert.Equal(t, "web.service.consul", string(out.service.Hostname))
		assert.Equal(t, "consul", out.service.Attributes.Namespace)
		assert.Equal(t, Provider, out.service.Attributes.ServiceRegistry)
		assert.Equal(t, model.ClientSideLB, out.service.Resolution)
	})
	t.Run("ports: one service, one port per registered port", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 8080, meta: map[string]string{"protocol": "http"}}),
			entry(reg{id: "b", addr: "10.0.0.1", port: 9090, meta: map[string]string{"protocol": "grpc"}}),
		})
		require.Len(t, out.service.Ports, 2)
		assert.Equal(t, model.Port{Name: "http-8080", Port: 8080, Protocol: protocol.HTTP}, *out.service.Ports[0])
		assert.Equal(t, model.Port{Name: "grpc-9090", Port: 9090, Protocol: protocol.GRPC}, *out.service.Ports[1])
	})
	t.Run("dynamic ports: meta service-port is the one service port, each endpoint on its own", func(t *testing.T) {
		sp := map[string]string{"protocol": "grpc", "service-port": "8080"}
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "alloc-1", addr: "10.0.0.1", port: 23101, meta: sp}),
			entry(reg{id: "alloc-2", addr: "10.0.0.1", port: 23102, meta: sp}),
			entry(reg{id: "alloc-3", addr: "10.0.0.2", port: 27450, meta: sp}),
		})
		require.Equal(t, model.PortList{{Name: "grpc-8080", Port: 8080, Protocol: protocol.GRPC}}, out.service.Ports)
		require.Len(t, out.endpoints, 3)
		for i, want := range []uint32{23101, 23102, 27450} {
			ep := out.endpoints[i]
			assert.Equal(t, want, ep.EndpointPort, "endpoint %d listens on its own port", i)
			assert.Equal(t, "grpc-8080", ep.ServicePortName)
			assert.Equal(t, 8080, ep.LegacyClusterPortKey, "the cluster outbound|8080||web.service.consul holds it")
		}
	})
	t.Run("dynamic ports: several named ports per instance, a service-port each", func(t *testing.T) {
		// Nomad port labels, or several registrations per instance: one
		// registration per port, each naming its service port.
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a-http", addr: "10.0.0.1", port: 23101, meta: map[string]string{"protocol": "http", "service-port": "80"}}),
			entry(reg{id: "a-admin", addr: "10.0.0.1", port: 23102, meta: map[string]string{"protocol": "http", "service-port": "9901"}}),
			entry(reg{id: "b-http", addr: "10.0.0.2", port: 31544, meta: map[string]string{"protocol": "http", "service-port": "80"}}),
			entry(reg{id: "b-admin", addr: "10.0.0.2", port: 31545, meta: map[string]string{"protocol": "http", "service-port": "9901"}}),
		})
		require.Equal(t, model.PortList{{Name: "http-80", Port: 80, Protocol: protocol.HTTP}, {Name: "http-9901", Port: 9901, Protocol: protocol.HTTP}},
			out.service.Ports)
		got := map[string][]uint32{}
		for _, ep := range out.endpoints {
			got[ep.ServicePortName] = append(got[ep.ServicePortName], ep.EndpointPort)
		}
		assert.Equal(t, map[string][]uint32{"http-80": {23101, 31544}, "http-9901": {23102, 31545}}, got)
	})
	t.Run("dynamic ports: --consulDefaultServicePort for instances without the meta", func(t *testing.T) {
		c := testConverter()
		c.servicePort = 8080
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 23101}),
			entry(reg{id: "b", addr: "10.0.0.2", port: 23102}),
			entry(reg{id: "c", addr: "10.0.0.3", port: 9000, meta: map[string]string{"service-port": "9000"}}),
		})
		require.Equal(t, model.PortList{{Name: "tcp-8080", Port: 8080, Protocol: protocol.TCP}, {Name: "tcp-9000", Port: 9000, Protocol: protocol.TCP}},
			out.service.Ports)
		assert.Equal(t, []uint32{23101, 23102, 9000}, []uint32{out.endpoints[0].EndpointPort, out.endpoints[1].EndpointPort, out.endpoints[2].EndpointPort})
	})
	t.Run("dynamic ports: a service-port that is no port skips the instance, with why", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 23101, meta: map[string]string{"service-port": "8080"}}),
			entry(reg{id: "b", addr: "10.0.0.2", port: 23102, meta: map[string]string{"service-port": "http"}}),
			entry(reg{id: "c", addr: "10.0.0.3", port: 23103, meta: map[string]string{"service-port": "70000"}}),
		})
		require.Len(t, out.endpoints, 1)
		require.Len(t, out.skipped, 2)
		assert.Equal(t, `meta "service-port" = "http" is not a port 1-65535`, out.skipped[0].Reason)
		assert.Equal(t, "bad_service_port", out.skipped[1].kind)
		assert.Contains(t, out.warnings("web")[0], `instance "b" on node "n1" skipped: meta "service-port"`)
	})
	t.Run("protocol: meta, else name prefix, else default", func(t *testing.T) {
		for _, tc := range []struct {
			name, meta string
			want       protocol.Instance
		}{
			{"web", "HTTP2", protocol.HTTP2},
			{"grpc-payments", "", protocol.GRPC},
			{"http-api", "bogus", protocol.HTTP},
			{"db", "", protocol.TCP},
		} {
			out := c.convert(tc.name, []*api.ServiceEntry{entry(reg{id: "a", addr: "10.0.0.1", port: 1, meta: map[string]string{"protocol": tc.meta}})})
			assert.Equal(t, tc.want, out.service.Ports[0].Protocol, tc.name)
		}
	})
	t.Run("conflicting protocols on one port: majority, then alphabetical, with a warning", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 80, meta: map[string]string{"protocol": "http"}}),
			entry(reg{id: "b", addr: "10.0.0.2", port: 80, meta: map[string]string{"protocol": "grpc"}}),
		})
		assert.Equal(t, protocol.GRPC, out.service.Ports[0].Protocol)
		require.Len(t, out.warnings("web"), 1)
		assert.Contains(t, out.warnings("web")[0], "different protocols on port 80")
		assert.Equal(t, []protocolConflict{{Port: 80, Declared: "GRPC×1, HTTP×1", Chosen: protocol.GRPC}}, out.conflicts)
	})
	t.Run("labels: key=value and key|value tags, then meta; invalid dropped", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{entry(reg{id: "a", addr: "10.0.0.1", port: 80,
			tags: []string{"version=v1", "track|canary", "plain", "bad key=x"},
			meta: map[string]string{"team": "pay", "version": "v2", "long": strings.Repeat("x", 64)}})})
		require.Len(t, out.endpoints, 1)
		assert.Equal(t, labels.Instance{"version": "v2", "track": "canary", "team": "pay"}, out.endpoints[0].Labels)
	})
	t.Run("address: service address, else node address; non-IP skipped", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", nodeAddr: "10.0.0.9", addr: "10.0.0.1", port: 80}),
			entry(reg{id: "b", nodeAddr: "10.0.0.9", port: 80}),
			entry(reg{id: "c", addr: "db.example.com", port: 80}),
			entry(reg{id: "d", port: 80}),
			entry(reg{id: "e", addr: "fe80::1%eth0", port: 80}),
		})
		require.Len(t, out.endpoints, 2)
		assert.Equal(t, []string{"10.0.0.1"}, out.endpoints[0].Addresses)
		assert.Equal(t, []string{"10.0.0.9"}, out.endpoints[1].Addresses)
		warnings := out.warnings("web")
		require.Len(t, warnings, 3)
		assert.Contains(t, warnings[2], "scoped to a network interface")
		assert.Contains(t, warnings[0], `"c"`)
		assert.Contains(t, warnings[0], "not an IP")
		assert.Contains(t, warnings[1], "neither the service nor its node has an address")
		assert.Equal(t, skipped{Instance: "c", Node: "n1", kind: "hostname_address",
			Reason: `address "db.example.com" is not an IP address (Consul hostnames are not resolved; register an IP)`}, out.skipped[0])
		var kinds []string // the reason label of pilot_consul_skipped_instances
		for _, s := range out.skipped {
			kinds = append(kinds, s.kind)
		}
		assert.Equal(t, []string{"hostname_address", "no_address", "scoped_address"}, kinds)
	})
	t.Run("bad port skipped", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{entry(reg{id: "a", addr: "10.0.0.1", port: 0}), entry(reg{id: "b", addr: "10.0.0.1", port: 70000})})
		assert.Empty(t, out.endpoints)
		assert.Nil(t, out.service, "no valid registration: not served at all")
		require.Len(t, out.warnings("web"), 3)
		assert.Contains(t, out.warnings("web")[2], `consul service "web" is not served: none of its 2 registrations is valid`)
		assert.Equal(t, "port 0 is out of range 1-65535", out.skipped[0].Reason)
	})
	t.Run("invalid service names skipped", func(t *testing.T) {
		for _, name := range []string{"Web", "web_api", "web.api", strings.Repeat("a", 64), ""} {
			out := c.convert(name, []*api.ServiceEntry{entry(reg{id: "a", addr: "10.0.0.1", port: 80})})
			assert.Nil(t, out.service, name)
			assert.Len(t, out.warnings(name), 1, name)
			assert.Contains(t, out.notServed, "name is not a DNS label", name)
		}
	})
	t.Run("non-workload kinds skipped", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{entry(reg{id: "p", addr: "10.0.0.1", port: 80, kind: api.ServiceKindConnectProxy})})
		assert.Empty(t, out.endpoints)
		assert.Empty(t, out.warnings("web"))
		assert.Nil(t, out.service, "a Connect sidecar-proxy service is no Istio service")
		assert.Contains(t, out.notServed, "none of its 1 registrations is a workload (kinds: connect-proxy×1)")
		assert.Equal(t, "kind connect-proxy is not a workload", out.skipped[0].Reason)

		// Next to a workload, the proxy is skipped and the service served.
		out = c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "p", addr: "10.0.0.1", port: 21000, kind: api.ServiceKindConnectProxy}),
			entry(reg{id: "w", addr: "10.0.0.1", port: 80}),
		})
		require.NotNil(t, out.service)
		assert.Len(t, out.service.Ports, 1)
		assert.Len(t, out.endpoints, 1)
		assert.Empty(t, out.notServed)
	})
	t.Run("locality: datacenter / zone / subzone", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 80, meta: map[string]string{"zone": "z1", "subzone": "s1"}}),
			entry(reg{id: "b", addr: "10.0.0.2", port: 80, nodeMeta: map[string]string{"zone": "z2"}}),
		})
		assert.Equal(t, "dc1/z1/s1", out.endpoints[0].Locality.Label)
		assert.Equal(t, "dc1/z2", out.endpoints[1].Locality.Label)
	})
	t.Run("identity and TLS mode", func(t *testing.T) {
		out := c.convert("web", []*api.ServiceEntry{
			entry(reg{id: "a", addr: "10.0.0.1", port: 80, meta: map[string]string{"service-account": "web", "tls-mode": "istio"}}),
			entry(reg{id: "b", addr: "10.0.0.2", port: 80}),
		})
		assert.Equal(t, "spiffe://cluster.local/ns/consul/sa/web", out.endpoints[0].ServiceAccount)
		assert.Equal(t, model.IstioMutualTLSModeLabel, out.endpoints[0].TLSMode)
		assert.Equal(t, "", out.endpoints[1].ServiceAccount)
		assert.Equal(t, model.DisabledTLSModeLabel, out.endpoints[1].TLSMode)
		assert.Equal(t, []string{"spiffe://cluster.local/ns/consul/sa/web"}, out.service.ServiceAccounts)
	})
}

func TestHealthPolicy(t *testing.T) {
	entries := []*api.ServiceEntry{
		entry(reg{id: "pass", addr: "10.0.0.1", port: 80, status: api.HealthPassing, weights: api.AgentWeights{Passing: 5, Warning: 2}}),
		entry(reg{id: "none", addr: "10.0.0.2", port: 80}),
		entry(reg{id: "warn", addr: "10.0.0.3", port: 80, status: api.HealthWarning, weights: api.AgentWeights{Passing: 5, Warning: 2}}),
		entry(reg{id: "crit", addr: "10.0.0.4", port: 80, status: api.HealthCritical}),
		entry(reg{id: "maint", addr: "10.0.0.5", port: 80, status: "maintenance"}),
	}
	summary := func(c *converter) map[string]string {
		out := map[string]string{}
		conv := c.convert("web", entries)
		for i, e := range conv.endpoints {
			out[conv.routed[i].id] = map[model.HealthStatus]string{model.Healthy: "healthy", model.UnHealthy: "unhealthy"}[e.HealthStatus] +
				"/" + strings.Repeat("w", int(e.LbWeight))
		}
		return out
	}
	c := testConverter()
	assert.Equal(t, map[string]string{"pass": "healthy/wwwww", "none": "healthy/w"}, summary(c), "default: passing only")
	c.includeWarning = true
	assert.Equal(t, map[string]string{"pass": "healthy/wwwww", "none": "healthy/w", "warn": "healthy/ww"}, summary(c), "warning included")
	c.sendUnhealthy = true
	assert.Equal(t, map[string]string{"pass": "healthy/wwwww", "none": "healthy/w", "warn": "healthy/ww",
		"crit": "unhealthy/w", "maint": "unhealthy/w"}, summary(c), "unhealthy sent, never healthy")
	// Ports come from every registration, so a health flip never changes the service.
	assert.Len(t, c.convert("web", entries).instances, 5)
}

// Instances of one service with the same tags and metadata hold one label
// map (their endpoints too); instances labelled differently keep their own;
// past sharedLabelSets distinct sets, further ones are not compared.
func TestInstancesShareEqualLabelMaps(t *testing.T) {
	var entries []*api.ServiceEntry
	for i := range 4 {
		entries = append(entries, entry(reg{id: fmt.Sprintf("a%d", i), addr: fmt.Sprintf("10.0.0.%d", i+1), port: 80,
			tags: []string{"version=" + []string{"v1", "v2"}[i%2]}, status: api.HealthPassing}))
	}
	out := testConverter().convert("web", entries)
	require.Len(t, out.instances, 4)
	same := func(a, b labels.Instance) bool {
		return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
	}
	assert.True(t, same(out.instances[0].labels, out.instances[2].labels), "v1 instances share a map")
	assert.True(t, same(out.instances[1].labels, out.instances[3].labels), "v2 instances share a map")
	assert.False(t, same(out.instances[0].labels, out.instances[1].labels))
	assert.Equal(t, labels.Instance{"version": "v2"}, out.instances[3].labels)
	for i, ep := range out.endpoints {
		assert.True(t, same(ep.Labels, out.instances[i].labels), "an endpoint holds its instance's map")
	}

	var sets []labels.Instance
	for i := range sharedLabelSets + 2 {
		shareLabels(&sets, labels.Instance{"id": fmt.Sprint(i)})
	}
	assert.Len(t, sets, sharedLabelSets, "distinct sets kept for sharing are bounded")
	late := labels.Instance{"id": "late"}
	assert.True(t, same(late, shareLabels(&sets, late)), "a set past the bound keeps its own map")
}
