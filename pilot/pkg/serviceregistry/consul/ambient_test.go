package consul

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/kube/krt"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// With ambient on, each served Consul service is a ServiceEntry and each
// healthy instance a WorkloadEntry it selects, carrying identity, locality,
// weight and tunnel; unhealthy instances, services without a workload and
// hostnames Kubernetes serves are left out; removal removes everything.
func TestAmbientInputs(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	reg := func(r api.AgentServiceRegistration) {
		if r.Check == nil {
			r.Check = &api.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "1h", Status: api.HealthPassing}
		}
		require.NoError(t, c.Client.Agent().ServiceRegister(&r))
	}
	reg(api.AgentServiceRegistration{ID: "amb-1", Name: "amb", Address: "127.0.0.61", Port: 8080, Weights: &api.AgentWeights{Passing: 3, Warning: 1},
		Meta: map[string]string{"protocol": "http", "service-account": "amb", "tls-mode": "istio", "tunnel": "http", "zone": "z1"}})
	reg(api.AgentServiceRegistration{ID: "amb-2", Name: "amb", Address: "127.0.0.62", Port: 8080,
		Tags: []string{"istio.io/use-waypoint=wp", "istio.io/use-waypoint-namespace=mesh"}})
	reg(api.AgentServiceRegistration{ID: "taken-1", Name: "taken", Address: "127.0.0.63", Port: 80})

	args := DefaultArgs()
	args.ServerURL = c.URL()
	require.NoError(t, args.Complete(func(string) string { return "" }))
	r, err := New(args, Options{XDSUpdater: xdsfake.NewFakeXDS(),
		KubernetesHas: func(h host.Name) bool { return h == "taken.service.consul" }})
	require.NoError(t, err)
	ses, wes := r.AmbientInputs()
	assert.False(t, ses.HasSynced(), "not synced before the registry")
	runAll(t, []*Controller{r})
	require.Eventually(t, ses.HasSynced, 20*time.Second, 20*time.Millisecond)

	workloads := func() map[string]*networkingclient.WorkloadEntry {
		out := map[string]*networkingclient.WorkloadEntry{}
		for _, we := range wes.List() {
			if we.Labels[LabelService] == "consul-amb" {
				out[we.Annotations["consul.pilot-consul.io/instance"]] = we
			}
		}
		return out
	}
	require.Eventually(t, func() bool { return len(workloads()) == 2 }, 10*time.Second, 10*time.Millisecond)
	sep := ses.GetKey("consul/consul-amb")
	require.NotNil(t, sep)
	se := *sep
	assert.Equal(t, []string{"amb.service.consul"}, se.Spec.Hosts)
	assert.Equal(t, []string{r.GetService("amb.service.consul").DefaultAddress}, se.Spec.Addresses)
	require.Len(t, se.Spec.Ports, 1)
	assert.Equal(t, uint32(8080), se.Spec.Ports[0].Number)
	assert.Equal(t, "HTTP", se.Spec.Ports[0].Protocol)
	assert.Equal(t, map[string]string{LabelService: "consul-amb"}, se.Spec.WorkloadSelector.Labels)
	assert.Equal(t, "wp", se.Labels["istio.io/use-waypoint"], "a tag binds the service to a waypoint")
	assert.Equal(t, "mesh", se.Labels["istio.io/use-waypoint-namespace"])
	assert.Nil(t, ses.GetKey("consul/consul-taken"), "Kubernetes wins")
	var names []string
	for _, s := range ses.List() {
		names = append(names, s.Name)
	}
	sort.Strings(names)
	assert.Equal(t, []string{"consul-amb", "consul-consul"}, names)

	w1, w2 := workloads()["amb-1"], workloads()["amb-2"]
	assert.Equal(t, "127.0.0.61", w1.Spec.Address)
	assert.Equal(t, "amb", w1.Spec.ServiceAccount)
	assert.Equal(t, "dc1/z1", w1.Spec.Locality)
	assert.Equal(t, uint32(3), w1.Spec.Weight)
	assert.Equal(t, "http", w1.Labels["networking.istio.io/tunnel"], "meta tunnel=http: HBONE")
	assert.Equal(t, "istio", w1.Labels["security.istio.io/tlsMode"])
	assert.Equal(t, "", w2.Spec.ServiceAccount)
	assert.NotContains(t, w2.Labels, "networking.istio.io/tunnel", "plaintext")

	require.NoError(t, c.Client.Agent().UpdateTTL("ttl-amb-2", "", api.HealthCritical))
	require.Eventually(t, func() bool { _, ok := workloads()["amb-2"]; return !ok && len(workloads()) == 1 },
		10*time.Second, 10*time.Millisecond, "an unhealthy instance leaves")

	require.NoError(t, c.Client.Agent().ServiceDeregister("amb-1"))
	require.NoError(t, c.Client.Agent().ServiceDeregister("amb-2"))
	require.Eventually(t, func() bool { return ses.GetKey("consul/consul-amb") == nil && len(workloads()) == 0 },
		10*time.Second, 10*time.Millisecond, "deregistration removes everything")
}

// Until the ambient index asks, a registry publishes nothing and holds no
// collections (ambient off costs nothing).
func TestAmbientOffPublishesNothing(t *testing.T) {
	f := newFixture(t, nil)
	f.register(api.AgentServiceRegistration{ID: "quiet-1", Name: "quiet", Address: "127.0.0.64", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("quiet", "127.0.0.64:80")
	assert.Nil(t, f.reg.ambient)
}

// The waypoint label a service gets is the one most of its instances name,
// ties to the alphabetically first; instances without it do not count.
func TestMostCommonLabel(t *testing.T) {
	eps := func(values ...string) []*model.IstioEndpoint {
		var out []*model.IstioEndpoint
		for _, v := range values {
			ep := &model.IstioEndpoint{Labels: labels.Instance{}}
			if v != "" {
				ep.Labels["k"] = v
			}
			out = append(out, ep)
		}
		return out
	}
	assert.Equal(t, "", mostCommonLabel(eps("", ""), "k"))
	assert.Equal(t, "b", mostCommonLabel(eps("b", "", ""), "k"))
	assert.Equal(t, "b", mostCommonLabel(eps("a", "b", "b", "c"), "k"))
	assert.Equal(t, "a", mostCommonLabel(eps("c", "a", "c", "a"), "k"))
}

// With --consulDatacenterFailover, ambient (and consul-mcp) see one
// ServiceEntry per shared hostname, whichever datacenters serve it,
// selecting every datacenter's WorkloadEntries; each non-local datacenter
// keeps its own <svc>.service.<dc>.consul one.
func TestAmbientInputsWithFailover(t *testing.T) {
	dc1, dc2 := wanJoined(t)
	require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w1", Name: "web", Address: "127.0.0.21", Port: 80}))
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w2", Name: "web", Address: "127.0.0.22", Port: 80}))
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "a2", Name: "api", Address: "127.0.0.23", Port: 81}))
	args := DefaultArgs()
	args.ServerURL, args.Datacenter, args.DatacenterFailover = dc1.URL(), "dc1,dc2", true
	require.NoError(t, args.Complete(func(string) string { return "" }))
	insts, err := NewRegistries(args, Options{XDSUpdater: xdsfake.NewFakeXDS()})
	require.NoError(t, err)
	var regs []*Controller
	var ses []krt.Collection[*networkingclient.ServiceEntry]
	var wes []krt.Collection[*networkingclient.WorkloadEntry]
	for _, i := range insts {
		r := i.(*Controller)
		se, we := r.AmbientInputs()
		regs, ses, wes = append(regs, r), append(ses, se), append(wes, we)
	}
	runAll(t, regs)

	// host -> "name selecting key=value"
	entries := func() map[string]string {
		out := map[string]string{}
		for _, c := range ses {
			for _, se := range c.List() {
				for k, v := range se.Spec.WorkloadSelector.Labels {
					out[se.Spec.Hosts[0]] += se.Name + " selecting " + k + "=" + v + ";"
				}
			}
		}
		return out
	}
	sharedBy := func(name string) []string {
		var out []string
		for _, c := range wes {
			for _, we := range c.List() {
				if we.Labels[LabelShared] == name {
					out = append(out, we.Spec.Address+"@"+we.Spec.Locality)
				}
			}
		}
		sort.Strings(out)
		return out
	}
	want := map[string]string{
		"web.service.consul":        "failover.web selecting " + LabelShared + "=web;",
		"api.service.consul":        "failover.api selecting " + LabelShared + "=api;",
		"consul.service.consul":     "failover.consul selecting " + LabelShared + "=consul;",
		"web.service.dc2.consul":    "consul-dc2-web selecting " + LabelService + "=consul-dc2-web;",
		"api.service.dc2.consul":    "consul-dc2-api selecting " + LabelService + "=consul-dc2-api;",
		"consul.service.dc2.consul": "consul-dc2-consul selecting " + LabelService + "=consul-dc2-consul;",
	}
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, entries()) && len(sharedBy("web")) == 2 },
		20*time.Second, 20*time.Millisecond, "got %v", entries())
	assert.Equal(t, []string{"127.0.0.21@dc1", "127.0.0.22@dc2"}, sharedBy("web"))
	var vip string
	for _, se := range ses[0].List() {
		if se.Name == "failover.web" {
			vip = se.Spec.Addresses[0]
		}
	}
	assert.Equal(t, regs[0].GetService("web.service.consul").DefaultAddress, vip, "the VIP sidecars get")

	require.NoError(t, dc1.Client.Agent().ServiceDeregister("w1"))
	require.Eventually(t, func() bool { return slices.Equal(sharedBy("web"), []string{"127.0.0.22@dc2"}) }, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, want["web.service.consul"], entries()["web.service.consul"], "dc2 still serves it")
	require.NoError(t, dc2.Client.Agent().ServiceDeregister("w2"))
	require.Eventually(t, func() bool { _, ok := entries()["web.service.consul"]; return !ok }, 20*time.Second, 20*time.Millisecond)
}

// Options.InlineEndpoints (consul-mcp --inlineEndpoints): each service's
// ServiceEntry carries its healthy instances as endpoints, with no
// selector, and no WorkloadEntry is published; a flip changes that one
// ServiceEntry.
func TestAmbientInputsInline(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	for _, r := range []api.AgentServiceRegistration{
		{ID: "in-1", Name: "in", Address: "127.0.0.81", Port: 8080, Meta: map[string]string{"protocol": "http", "zone": "z1"}},
		{ID: "in-2", Name: "in", Address: "127.0.0.82", Port: 8080},
	} {
		r.Check = &api.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "1h", Status: api.HealthPassing}
		require.NoError(t, c.Client.Agent().ServiceRegister(&r))
	}
	args := DefaultArgs()
	args.ServerURL = c.URL()
	require.NoError(t, args.Complete(func(string) string { return "" }))
	r, err := New(args, Options{XDSUpdater: xdsfake.NewFakeXDS(), InlineEndpoints: true})
	require.NoError(t, err)
	ses, wes := r.AmbientInputs()
	runAll(t, []*Controller{r})
	endpoints := func() []string {
		for _, se := range ses.List() {
			if se.Name != "consul-in" {
				continue
			}
			assert.Nil(t, se.Spec.WorkloadSelector)
			var out []string
			for _, e := range se.Spec.Endpoints {
				out = append(out, e.Address+"@"+e.Locality+":"+fmt.Sprint(e.Ports["http-8080"]))
			}
			sort.Strings(out)
			return out
		}
		return nil
	}
	require.Eventually(t, func() bool { return len(endpoints()) == 2 }, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"127.0.0.81@dc1/z1:8080", "127.0.0.82@dc1:8080"}, endpoints())
	assert.Empty(t, wes.List(), "no WorkloadEntries")

	require.NoError(t, c.Client.Agent().UpdateTTL("ttl-in-2", "", api.HealthCritical))
	require.Eventually(t, func() bool { return slices.Equal(endpoints(), []string{"127.0.0.81@dc1/z1:8080"}) },
		20*time.Second, 20*time.Millisecond, "got %v", endpoints())
	assert.Empty(t, wes.List())
}
