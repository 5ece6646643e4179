package consul

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/schema/kind"
	"istio.io/istio/pkg/test"
	"istio.io/istio/pkg/util/sets"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// fixture is a real Consul agent and a registry watching it; xds records
// what istiod receives, and istiod holds the endpoint shards it would.
type fixture struct {
	t      *testing.T
	consul *harness.Consul
	reg    *Controller
	xds    *xdsfake.Updater
	istiod *istiodSide
}

func newFixture(t *testing.T, edit func(*Args)) *fixture {
	t.Helper()
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	return startRegistry(t, c, edit)
}

func startRegistry(t *testing.T, c *harness.Consul, edit func(*Args)) *fixture {
	t.Helper()
	return startRegistryWith(t, c, newIstiodSide(), edit)
}

// startRegistryWith is startRegistry with istiod's side given (hooks set),
// and before run on the registry before it starts.
func startRegistryWith(t *testing.T, c *harness.Consul, side *istiodSide, edit func(*Args), before ...func(*Controller)) *fixture {
	t.Helper()
	args := DefaultArgs()
	args.ServerURL = c.URL()
	args.WaitTime = 10 * time.Second
	if edit != nil {
		edit(&args)
	}
	require.NoError(t, args.Complete(func(string) string { return "" }))
	xds := xdsfake.NewWithDelegate(side)
	reg, err := New(args, Options{XDSUpdater: xds})
	require.NoError(t, err)
	reg.AppendServiceHandler(bootstrapHandler(t, xds))
	reg.AppendServiceHandler(side.handler)
	for _, f := range before {
		f(reg)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { reg.Run(stop); close(done) }()
	t.Cleanup(func() {
		close(stop)
		<-done // Run must return once stopped
	})
	return &fixture{t: t, consul: c, reg: reg, xds: xds, istiod: side}
}

// bootstrapHandler does what istiod's bootstrap service handler does
// (pilot/pkg/bootstrap/server.go initRegistryEventHandlers): a push of the
// changed service's ServiceEntry, which rebuilds what depends on it (a full
// push, before Istio 1.31 removed PushRequest.Full; xdsfake records it as
// servicePush without the field). It reads curr, as istiod does, so a handler
// call with a nil curr fails the test instead of crashing istiod in production.
func bootstrapHandler(t *testing.T, xds model.XDSUpdater) model.ServiceHandler {
	return func(prev, curr *model.Service, event model.Event) {
		require.NotNil(t, curr, "service handler called with nil curr (%v)", event)
		xds.ConfigUpdate(&model.PushRequest{
			ConfigsUpdated: sets.New(model.ConfigKey{Kind: kind.ServiceEntry, Name: string(curr.Hostname), Namespace: curr.Attributes.Namespace}),
			Reason:         model.NewReasonStats(model.ServiceUpdate),
		})
	}
}

// servicePush is how xdsfake records bootstrapHandler's push; the registry
// itself pushes endpoints only ("eds" events).
const servicePush = "xds"

func (f *fixture) register(r api.AgentServiceRegistration) {
	f.t.Helper()
	if r.Check == nil {
		r.Check = &api.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "1h", Status: api.HealthPassing}
	}
	require.NoError(f.t, f.consul.Client.Agent().ServiceRegister(&r))
}

func (f *fixture) setHealth(id, status string) {
	f.t.Helper()
	require.NoError(f.t, f.consul.Client.Agent().UpdateTTL("ttl-"+id, "", status))
}

func (f *fixture) waitSynced() {
	f.t.Helper()
	require.Eventually(f.t, f.reg.HasSynced, 20*time.Second, 20*time.Millisecond, "registry never synced")
}

// endpoints the registry currently serves for a service, as "addr:port".
func (f *fixture) endpoints(name string) []string {
	return endpointAddrs(f.reg.store.get(name))
}

func endpointAddrs(s *serviceState) []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, e := range s.endpoints {
		out = append(out, fmt.Sprintf("%s:%d", e.Addresses[0], e.EndpointPort))
	}
	sort.Strings(out)
	return out
}

func (f *fixture) eventuallyEndpoints(name string, want ...string) {
	f.t.Helper()
	sort.Strings(want)
	if want == nil {
		want = []string{}
	}
	assert.Eventually(f.t, func() bool {
		got := f.endpoints(name)
		if got == nil {
			got = []string{}
		}
		return assert.ObjectsAreEqual(want, got)
	}, 10*time.Second, 10*time.Millisecond, "endpoints of %s: want %v, have %v", name, want, f.endpoints(name))
}

// waitEvent waits for an event of type typ for hostname, skipping others.
func (f *fixture) waitEvent(typ, hostname string) xdsfake.Event {
	f.t.Helper()
	events := f.eventsUntil(typ, hostname)
	return events[len(events)-1]
}

// eventsUntil returns every event istiod receives up to and including the
// next one of type typ for hostname.
func (f *fixture) eventsUntil(typ, hostname string) []xdsfake.Event {
	f.t.Helper()
	deadline := time.After(10 * time.Second)
	var seen []xdsfake.Event
	for {
		select {
		case e := <-f.xds.Events:
			seen = append(seen, e)
			if e.Type == typ && e.ID == hostname {
				return seen
			}
		case <-deadline:
			f.t.Fatalf("no %q event for %s; saw %v", typ, hostname, seen)
		}
	}
}

// A flip is an EDS update and nothing else. Each flip's events are
// checked up to the next flip's EDS update: pushes of one service leave in
// order (service.go), so a full push a flip caused would arrive before it.
func TestHealthFlipIsAnEDSOnlyPush(t *testing.T) {
	f := newFixture(t, nil)
	f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 8080})
	f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 8080})
	f.waitSynced()
	f.eventuallyEndpoints("web", "127.0.0.11:8080", "127.0.0.12:8080")
	settled(t, f.reg) // the sync's pushes have all been made
	f.xds.Clear()

	var events []xdsfake.Event
	flip := func(status string, want int, why string) {
		f.setHealth("web-2", status)
		seen := f.eventsUntil("eds", "web.service.consul")
		events = append(events, seen...)
		ev := seen[len(seen)-1]
		require.Len(t, ev.Endpoints, want, why)
		if want == 1 {
			assert.Equal(t, []string{"127.0.0.11"}, ev.Endpoints[0].Addresses, why)
		}
	}
	flip(api.HealthCritical, 1, "critical")
	flip(api.HealthPassing, 2, "passing again")
	flip(api.HealthWarning, 1, "warning is not routed by default")
	flip(api.HealthPassing, 2, "the last flip's events end here")
	for _, e := range events {
		assert.NotEqual(t, servicePush, e.Type, "a flip is no full push: %v", e)
	}
}

func TestWarningOptionAndWeights(t *testing.T) {
	f := newFixture(t, func(a *Args) { a.Mapping.IncludeWarning = true })
	f.register(api.AgentServiceRegistration{ID: "api-1", Name: "api", Address: "127.0.0.21", Port: 80,
		Weights: &api.AgentWeights{Passing: 7, Warning: 3}})
	f.waitSynced()
	f.eventuallyEndpoints("api", "127.0.0.21:80")
	weight := func() uint32 { return f.reg.store.get("api").endpoints[0].LbWeight }
	assert.Equal(t, uint32(7), weight())
	f.setHealth("api-1", api.HealthWarning)
	assert.Eventually(t, func() bool { return len(f.endpoints("api")) == 1 && weight() == 3 }, 10*time.Second, 10*time.Millisecond)
}

func TestServiceLifecycle(t *testing.T) {
	f := newFixture(t, nil)
	f.register(api.AgentServiceRegistration{ID: "a-1", Name: "alpha", Address: "127.0.0.31", Port: 80})
	f.waitSynced()
	f.xds.Clear()

	// A new service: a push scoped to that service.
	f.register(api.AgentServiceRegistration{ID: "b-1", Name: "beta", Address: "127.0.0.32", Port: 80})
	f.waitEvent(servicePush, "beta.service.consul")
	require.NotNil(t, f.reg.GetService("beta.service.consul"))

	// A second registration on a new port adds a port.
	f.register(api.AgentServiceRegistration{ID: "b-2", Name: "beta", Address: "127.0.0.32", Port: 9090,
		Meta: map[string]string{"protocol": "grpc"}})
	f.waitEvent(servicePush, "beta.service.consul")
	ports := f.reg.GetService("beta.service.consul").Ports
	require.Len(t, ports, 2)
	assert.Equal(t, "grpc-9090", ports[1].Name)

	// Deregistering every instance deletes the service.
	require.NoError(t, f.consul.Client.Agent().ServiceDeregister("b-1"))
	require.NoError(t, f.consul.Client.Agent().ServiceDeregister("b-2"))
	f.waitEvent(servicePush, "beta.service.consul")
	assert.Eventually(t, func() bool { return f.reg.GetService("beta.service.consul") == nil }, 10*time.Second, 10*time.Millisecond)
	assert.NotNil(t, f.reg.GetService("alpha.service.consul"), "other services untouched")
}

// Services with registrations but no workload among them are not Istio
// services: Consul Connect's <name>-sidecar-proxy, or only bad input. Once
// a workload registers, the service appears.
func TestServicesWithoutWorkloadsAreNotServed(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	// Registered before the registry starts: its first listing, which
	// HasSynced waits for, holds all of them.
	pre := &fixture{t: t, consul: c}
	pre.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.51", Port: 80,
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{}}})
	pre.register(api.AgentServiceRegistration{ID: "bad-1", Name: "onlybad", Address: "bad.example.com", Port: 80})
	f := startRegistry(t, c, nil)
	f.waitSynced()
	sidecar, _, err := f.consul.Client.Agent().Service("web-1-sidecar-proxy", nil)
	require.NoError(t, err, "Consul registered the Connect sidecar proxy")
	require.Equal(t, "web-sidecar-proxy", sidecar.Service)
	require.Equal(t, api.ServiceKindConnectProxy, sidecar.Kind)

	var hosts []string
	for _, svc := range f.reg.Services() {
		hosts = append(hosts, string(svc.Hostname))
	}
	sort.Strings(hosts)
	assert.Equal(t, []string{"consul.service.consul", "web.service.consul"}, hosts, "Consul itself and web; no sidecar proxy, no all-bad service")

	f.register(api.AgentServiceRegistration{ID: "good-1", Name: "onlybad", Address: "127.0.0.52", Port: 80})
	f.waitEvent(servicePush, "onlybad.service.consul")
	require.NotNil(t, f.reg.GetService("onlybad.service.consul"))
	f.eventuallyEndpoints("onlybad", "127.0.0.52:80")
}

func TestInstanceWithoutChecks(t *testing.T) {
	f := newFixture(t, nil)
	f.register(api.AgentServiceRegistration{ID: "c-1", Name: "gamma", Address: "127.0.0.41", Port: 80})
	f.waitSynced()
	// No check: only the catalog index moves, names and tags do not.
	require.NoError(t, f.consul.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "c-2", Name: "gamma", Address: "127.0.0.42", Port: 80}))
	f.eventuallyEndpoints("gamma", "127.0.0.41:80", "127.0.0.42:80")
}

func TestKubernetesWins(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	args := DefaultArgs()
	args.ServerURL = c.URL()
	require.NoError(t, args.Complete(func(string) string { return "" }))
	reg, err := New(args, Options{XDSUpdater: xdsfake.NewFakeXDS(),
		KubernetesHas: func(h host.Name) bool { return h == "taken.service.consul" }})
	require.NoError(t, err)
	go reg.Run(test.NewStop(t))
	for _, name := range []string{"taken", "free"} {
		require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: name, Name: name, Address: "127.0.0.5", Port: 80}))
	}
	assert.Eventually(t, func() bool { return reg.GetService("free.service.consul") != nil }, 10*time.Second, 10*time.Millisecond)
	assert.Nil(t, reg.GetService("taken.service.consul"))
	for _, s := range reg.Services() {
		assert.NotEqual(t, host.Name("taken.service.consul"), s.Hostname)
	}
}

func TestProxyLookups(t *testing.T) {
	f := newFixture(t, nil)
	f.register(api.AgentServiceRegistration{ID: "vm-1", Name: "vm", Address: "127.0.0.61", Port: 7070, Tags: []string{"version=v1"}})
	f.waitSynced()
	f.eventuallyEndpoints("vm", "127.0.0.61:7070")
	p := &model.Proxy{IPAddresses: []string{"127.0.0.61"}}
	targets := f.reg.GetProxyServiceTargets(p)
	require.Len(t, targets, 1)
	assert.Equal(t, host.Name("vm.service.consul"), targets[0].Service.Hostname)
	assert.Equal(t, uint32(7070), targets[0].Port.TargetPort)
	assert.Equal(t, "v1", f.reg.GetProxyWorkloadLabels(p)["version"])
	assert.Empty(t, f.reg.GetProxyServiceTargets(&model.Proxy{IPAddresses: []string{"127.0.0.99"}}))
}

// TestOutageKeepsLastGoodStateThenResyncs: Consul stops (the registry keeps
// serving what it had) and comes back as a fresh agent with lower indexes
// and a different catalog (the registry resets its watch and converges).
func TestOutageKeepsLastGoodStateThenResyncs(t *testing.T) {
	f := newFixture(t, func(a *Args) { a.WaitTime = 2 * time.Second })
	for i := range 3 {
		f.register(api.AgentServiceRegistration{ID: fmt.Sprintf("s-%d", i), Name: "stay", Address: fmt.Sprintf("127.0.0.7%d", i), Port: 80})
	}
	f.register(api.AgentServiceRegistration{ID: "g-1", Name: "gone", Address: "127.0.0.80", Port: 80})
	f.register(api.AgentServiceRegistration{ID: "k-1", Name: "keep", Address: "127.0.0.85", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("stay", "127.0.0.70:80", "127.0.0.71:80", "127.0.0.72:80")
	f.eventuallyEndpoints("gone", "127.0.0.80:80")
	// Push the old agent's indexes well above what the new one will reach.
	// (Status changes, since the agent syncs output-only changes lazily.)
	for i := range 60 {
		f.setHealth("k-1", []string{api.HealthWarning, api.HealthPassing}[i%2])
	}
	// The flips may be seen in one read that ends where it began (passing):
	// a last one that changes what is served makes the registry read "keep".
	f.setHealth("k-1", api.HealthCritical)
	f.eventuallyEndpoints("keep")
	f.setHealth("k-1", api.HealthPassing)
	f.eventuallyEndpoints("keep", "127.0.0.85:80")
	require.Eventually(t, func() bool {
		index, _ := f.reg.store.readIndex("keep")
		return index > 60
	}, 10*time.Second, 10*time.Millisecond)

	f.consul.Stop()
	require.Eventually(t, func() bool { return !reachable(f.reg) }, 15*time.Second, 50*time.Millisecond)
	assert.Len(t, f.endpoints("stay"), 3, "outage must not wipe endpoints")
	assert.Len(t, f.endpoints("gone"), 1)

	// A fresh agent (indexes from 1) that defines "keep" in its own config, as a
	// rebuilt Consul with agents re-registering would: "keep" never leaves the
	// catalog, so only the index regression can tell the registry to re-read it.
	require.NoError(t, f.consul.Start(func(c *harness.ConsulConfig) {
		c.Services = []harness.ConsulService{{ID: "k-1", Name: "keep", Address: "127.0.0.85", Port: 80, Status: api.HealthPassing}}
	}))
	f.register(api.AgentServiceRegistration{ID: "s-0", Name: "stay", Address: "127.0.0.70", Port: 80})
	f.register(api.AgentServiceRegistration{ID: "n-1", Name: "new", Address: "127.0.0.90", Port: 80})
	f.eventuallyEndpoints("stay", "127.0.0.70:80")
	f.eventuallyEndpoints("new", "127.0.0.90:80")
	assert.Eventually(t, func() bool { return f.reg.GetService("gone.service.consul") == nil }, 10*time.Second, 10*time.Millisecond)

	// A flip on the new agent, at an index below the old one, must be seen.
	f.eventuallyEndpoints("keep", "127.0.0.85:80")
	f.setHealth("k-1", api.HealthCritical)
	f.eventuallyEndpoints("keep")
}

// settled waits until the registry is idle: the baseline read of every
// check (which follows the first sync) is done, and no read of checks or
// services is requested, queued or in work, nor a verdict waiting.
func settled(t *testing.T, reg *Controller) {
	t.Helper()
	require.Eventually(t, reg.idle, 20*time.Second, 20*time.Millisecond, "the registry never became idle")
}

// reachable is what /debug/consulz says of Consul.
func reachable(reg *Controller) bool { return reg.debugView("").Consul.Reachable }

// An idle catalog costs only the watches: a blocking query that times out
// (same index, same content) is no change and must not re-read services.
// Catalog-wide, the four watches; with a watch per service, each service's
// watch, the listing and the restore sentinel. Counted per event: every
// request the registry sends is counted by path until each watch has timed
// out three times.
func TestIdleCatalogCostsOnlyTheWatches(t *testing.T) {
	for _, watch := range []string{watchCatalog, watchServices} {
		t.Run(watch, func(t *testing.T) { testIdleCatalogCostsOnlyTheWatches(t, watch) })
	}
}

func testIdleCatalogCostsOnlyTheWatches(t *testing.T, watch string) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	counter, err := harness.StartFaultProxy(t, c.URL())
	require.NoError(t, err)
	var mu sync.Mutex
	byPath := map[string]int{}
	counter.Rewrite(func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		key := r.URL.Path
		if r.URL.Query().Has("node-meta") {
			key += " (restore sentinel)"
		}
		byPath[key]++
	})
	counts := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(byPath)
	}
	f := startRegistry(t, c, func(a *Args) {
		a.ServerURL, a.WaitTime, a.ServiceWaitTime, a.Watch = counter.URL, time.Second, time.Second, watch
	})
	watched := watchPaths
	if watch == watchServices {
		watched = []string{"/v1/catalog/services", "/v1/catalog/services (restore sentinel)", "/v1/health/service/consul"}
	}
	for i := range 20 {
		f.register(api.AgentServiceRegistration{ID: fmt.Sprintf("idle-%d", i), Name: fmt.Sprintf("idle-%d", i),
			Address: "127.0.0.50", Port: 80})
		if watch == watchServices {
			watched = append(watched, fmt.Sprintf("/v1/health/service/idle-%d", i))
		}
	}
	f.waitSynced()
	require.Eventually(t, func() bool { return len(f.reg.Services()) == 21 }, 10*time.Second, 10*time.Millisecond)
	settled(t, f.reg)
	require.Equal(t, watch, f.reg.detectorName())
	if watch == watchCatalog {
		require.Len(t, watchPaths, watches)
	}

	before := counts()
	since := func(now map[string]int, path string) int { return now[path] - before[path] }
	var after map[string]int
	require.Eventually(t, func() bool {
		after = counts()
		for _, p := range watched {
			if since(after, p) < 3 {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "every watch times out three times")
	t.Logf("requests while idle, by path: %v (before: %v)", after, before)
	least, most := math.MaxInt, 0
	for _, p := range watched {
		least, most = min(least, since(after, p)), max(most, since(after, p))
	}
	for p := range after {
		if !slices.Contains(watched, p) {
			assert.Zero(t, since(after, p), "%s: only watch timeouts, no other reads while idle", p)
		}
	}
	// The watches share one wait, so they time out in step: one that asked
	// again at once instead of blocking would be far ahead of the others.
	assert.LessOrEqual(t, most, least+2, "each watch blocks for its wait")
}

// Run stops everything it started, timers included: with a pinpoint verdict
// waiting out its grace period (an instance without checks moved the
// catalog), Run returns at once, and the package's leak check
// (leak_test.go) finds nothing of the registry left.
func TestRunStopsWithAVerdictPending(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	args := DefaultArgs()
	args.ServerURL = c.URL()
	require.NoError(t, args.Complete(func(string) string { return "" }))
	reg, err := New(args, Options{XDSUpdater: xdsfake.NewFakeXDS()})
	require.NoError(t, err)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { reg.Run(stop); close(done) }()
	settled(t, reg)

	// No check: the catalog index moves, a pinpoint read runs, and its
	// verdict waits a grace period for the reads it caused.
	require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "bare-1", Name: "bare", Address: "127.0.0.95", Port: 80}))
	require.Eventually(t, func() bool { return reg.GetService("bare.service.consul") != nil },
		10*time.Second, 10*time.Millisecond)
	close(stop)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return with a verdict pending")
	}
}
