package consul

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pilot/pkg/serviceregistry"
	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
	"istio.io/istio/pkg/config/host"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// consulz fetches /debug/consulz from the handler istiod serves.
func consulz(t *testing.T, regs []serviceregistry.Instance, query string) (debugView, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	DebugHandler(regs).ServeHTTP(rec, httptest.NewRequest("GET", "/debug/consulz"+query, nil))
	require.Equal(t, 200, rec.Code)
	body, err := io.ReadAll(rec.Body)
	require.NoError(t, err)
	var v debugView
	require.NoError(t, json.Unmarshal(body, &v), string(body))
	return v, string(body)
}

// /debug/consulz says what each registry reads and serves, and why anything
// read is not served: skipped instances with reasons, services without a
// workload, hostnames Kubernetes serves. It never shows the ACL token.
func TestDebugView(t *testing.T) {
	const token = "5e3c7e70-0000-4000-8000-00000000beef"
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	reg := func(r api.AgentServiceRegistration) {
		require.NoError(t, c.Client.Agent().ServiceRegister(&r))
	}
	reg(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 8080, Tags: []string{"version=v1"},
		Meta:    map[string]string{"protocol": "http"},
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{}}})
	reg(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "db.example.com", Port: 8080})
	reg(api.AgentServiceRegistration{ID: "web-3", Name: "web", Address: "127.0.0.13", Port: 8080,
		Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}})
	reg(api.AgentServiceRegistration{ID: "taken-1", Name: "taken", Address: "127.0.0.14", Port: 80})

	args := DefaultArgs()
	args.ServerURL, args.Auth.Token = c.URL(), secret(token)
	require.NoError(t, args.Complete(func(string) string { return "" }))
	r, err := New(args, Options{XDSUpdater: xdsfake.NewFakeXDS(),
		KubernetesHas: func(h host.Name) bool { return h == "taken.service.consul" }})
	require.NoError(t, err)
	runAll(t, []*Controller{r})
	require.Eventually(t, r.HasSynced, 20*time.Second, 20*time.Millisecond)
	regs := []serviceregistry.Instance{r}

	v, body := consulz(t, regs, "")
	assert.NotContains(t, body, token, "the ACL token never appears")
	require.Len(t, v.Registries, 1)
	rv := v.Registries[0]
	assert.Equal(t, "consul", rv.Cluster)
	assert.Equal(t, c.URL(), rv.Consul.Address)
	assert.True(t, rv.Consul.Reachable)
	assert.True(t, rv.Synced)
	assert.NotNil(t, rv.Consul.LastSuccessfulRead)
	assert.Empty(t, rv.Consul.LastError)
	assert.NotZero(t, rv.Consul.CatalogIndex)
	assert.Equal(t, 3, rv.Counts.Services, "consul, web, taken")
	assert.Equal(t, 4, rv.Counts.VIPsUsed, "every listed name holds one: web-sidecar-proxy too (vip.go)")
	assert.Equal(t, uint64(65534), rv.Counts.VIPCapacity)
	assert.Equal(t, []string{"taken.service.consul"}, rv.HiddenByKubernetes)

	byName := map[string]serviceView{}
	for _, s := range rv.Services {
		byName[s.Name] = s
	}
	assert.True(t, byName["taken"].HiddenByKubernetes)
	web := byName["web"]
	assert.Equal(t, "web.service.consul", web.Hostname)
	assert.Equal(t, r.GetService("web.service.consul").DefaultAddress, web.VIP)
	assert.Equal(t, []portView{{Name: "http-8080", Port: 8080, Protocol: "HTTP"}}, web.Ports)
	assert.NotZero(t, web.ReadIndex)
	require.Len(t, web.Instances, 2, "the two valid instances, routed or not")
	byID := map[string]instanceView{}
	for _, i := range web.Instances {
		byID[i.ID] = i
	}
	assert.Equal(t, instanceView{ID: "web-1", Node: byID["web-1"].Node, Address: "127.0.0.11", Port: 8080, ServicePort: 8080, Status: "passing",
		Routed: true, Weight: 1, Labels: map[string]string{"version": "v1", "protocol": "http"}}, byID["web-1"])
	assert.Equal(t, "critical", byID["web-3"].Status)
	assert.False(t, byID["web-3"].Routed, "critical instances are not routed")
	assert.Equal(t, []protocolConflict{{Port: 8080, Declared: "HTTP×1, TCP×1", Chosen: "HTTP"}}, web.ProtocolConflicts,
		"web-3 declares no protocol (TCP by default), web-1 HTTP")
	require.Len(t, web.Skipped, 1)
	assert.Equal(t, "web-2", web.Skipped[0].Instance)
	assert.Contains(t, web.Skipped[0].Reason, `address "db.example.com" is not an IP address`)

	require.Len(t, rv.NotServed, 1)
	assert.Equal(t, "web-sidecar-proxy", rv.NotServed[0].Name)
	assert.Contains(t, rv.NotServed[0].Reason, "none of its 1 registrations is a workload")
	require.Len(t, rv.NotServed[0].Skipped, 1)
	assert.Equal(t, "kind connect-proxy is not a workload", rv.NotServed[0].Skipped[0].Reason)

	t.Run("?service= narrows to one service, by name or hostname", func(t *testing.T) {
		for _, q := range []string{"?service=web", "?service=web.service.consul"} {
			v, _ := consulz(t, regs, q)
			require.Len(t, v.Registries[0].Services, 1, q)
			assert.Equal(t, "web", v.Registries[0].Services[0].Name, q)
			assert.Empty(t, v.Registries[0].NotServed, q)
		}
		v, _ := consulz(t, regs, "?service=web-sidecar-proxy")
		assert.Empty(t, v.Registries[0].Services)
		require.Len(t, v.Registries[0].NotServed, 1)
		v, _ = consulz(t, regs, "?service=taken")
		assert.Equal(t, []string{"taken.service.consul"}, v.Registries[0].HiddenByKubernetes)
	})
	t.Run("an outage shows as unreachable with the error, the token still hidden", func(t *testing.T) {
		c.Stop()
		require.Eventually(t, func() bool { return !reachable(r) }, 15*time.Second, 20*time.Millisecond)
		v, body := consulz(t, regs, "")
		assert.NotContains(t, body, token)
		assert.Contains(t, v.Registries[0].Consul.LastError, c.URL())
		assert.Equal(t, 3, v.Registries[0].Counts.Services, "the last good state is kept")
	})
}
