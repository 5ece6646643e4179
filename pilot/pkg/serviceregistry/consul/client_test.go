package consul

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// behindProxy runs a registry against a real Consul through a fault proxy.
func behindProxy(t *testing.T, edit func(*Args)) (*fixture, *harness.FaultProxy) {
	t.Helper()
	c, proxy := consulBehindProxy(t)
	return startRegistry(t, c, func(a *Args) {
		a.ServerURL = proxy.URL
		if edit != nil {
			edit(a)
		}
	}), proxy
}

// consulBehindProxy starts a real Consul and a fault proxy in front of it,
// so hooks can be set before a registry sends its first request.
func consulBehindProxy(t *testing.T) (*harness.Consul, *harness.FaultProxy) {
	t.Helper()
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	proxy, err := harness.StartFaultProxy(t, c.URL())
	require.NoError(t, err)
	return c, proxy
}

// Defect: no request had a deadline. A request that is accepted and never
// answered (a lost node, a NAT or load balancer that dropped the
// connection without a reset) hung its reader for as long as the kernel
// kept the connection, ~5 minutes, and pooled dead connections could stall
// every worker at once. Every request now has one: the registry follows
// Consul again within a few seconds of the connection healing.
func TestUnansweredRequestsTimeOut(t *testing.T) {
	f, proxy := behindProxy(t, func(a *Args) { a.RequestTimeout, a.WaitTime = time.Second, 2*time.Second })
	f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80})
	f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")

	for _, fault := range []string{"hang", "reset-after-data"} {
		var faulted atomic.Int64 // requests that met the fault
		proxy.Rewrite(func(*http.Request) { faulted.Add(1) })
		proxy.Set(fault)
		// Made during the fault: seen once the connection heals (a blocking
		// read forwarded before the fault may see it at once, too).
		f.setHealth("web-2", api.HealthCritical)
		// The rate over a measured window of ten faulted requests, once the
		// first five met the fault: while every request meets it, the
		// watches retry once per timeout (3.1 s) with a hedge a second, and
		// the gate lets one read through per backoff period: a few a
		// second. Ten is twice that; a reader without a deadline or a
		// backoff spins at hundreds.
		require.Eventually(t, func() bool { return faulted.Load() >= 5 }, 60*time.Second, 10*time.Millisecond,
			"%s: requests meet the fault", fault)
		first, start := faulted.Load(), time.Now()
		require.Eventually(t, func() bool { return faulted.Load() >= first+10 }, 60*time.Second, 10*time.Millisecond,
			"%s: requests are retried", fault)
		elapsed := time.Since(start)
		rate := float64(faulted.Load()-first) / elapsed.Seconds()
		t.Logf("%s: %.1f requests/s over %v", fault, rate, elapsed.Round(time.Millisecond))
		assert.LessOrEqual(t, rate, 10.0, "%s: requests per second", fault)
		healed := time.Now()
		proxy.Rewrite(func(*http.Request) {})
		proxy.Set("")
		// Within RequestTimeout + WaitTime + a backoff (~3.5 s) once the
		// connection heals; without deadlines a hung request is held until
		// the kernel gives up on the connection (minutes).
		require.Eventually(t, func() bool { return slices.Equal(f.endpoints("web"), []string{"127.0.0.11:80"}) },
			30*time.Second, 10*time.Millisecond, "%s: converged after the connection healed", fault)
		t.Logf("%s: converged %v after the connection healed", fault, time.Since(healed).Round(time.Millisecond))
		f.setHealth("web-2", api.HealthPassing)
		f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")
	}
}

// Defect: a stale read's answer was stored whatever its age. Behind a load
// balancer in front of the servers, a lagging follower's older answer was
// stored as truth until the next change (minutes, in a quiet cluster). The
// proxy answers one read after a health flip with what Consul said before
// it, as a follower that has not applied the flip would: the registry sees
// the answer is older than the change that marked the service, and asks
// the leader.
func TestLaggingServerAnswerIsNotStored(t *testing.T) {
	c, proxy := consulBehindProxy(t)
	// Set before the registry's first request: it records every answer.
	lagging := newLaggingServer(proxy, "/v1/health/service/web")
	f := startRegistry(t, c, func(a *Args) { a.ServerURL, a.Watch = proxy.URL, watchCatalog })
	f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80})
	f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")

	// Only an answer that holds a change made after this point is lagged:
	// no read before the flip can use the lag up.
	lagging.lagNext(t)
	f.setHealth("web-2", api.HealthCritical)
	f.eventuallyEndpoints("web", "127.0.0.11:80")
	assert.Equal(t, []string{"/v1/health/service/web"}, lagging.given(), "the lagging answer was given")
	assert.Equal(t, []string{"/v1/health/service/web"}, lagging.askedLeader(),
		"the registry saw the answer was behind and asked the leader instead of storing it")
}

// laggingServer makes a proxy answer, once armed, the first stale read of
// each of its paths that holds a newer change with that path's answer from
// before: a server behind the change that asked for the read. It records
// the reads of those paths sent to the leader (no ?stale) after that.
type laggingServer struct {
	paths []string
	mu    sync.Mutex
	last  map[string]laggedAnswer // path -> the newest answer seen
	armed map[string]laggedAnswer // path -> the answer to give in place of a newer one
	gave  []string                // paths answered late
	asked []string                // paths read from the leader after a late answer
}

type laggedAnswer struct {
	body  []byte
	index uint64
}

// newLaggingServer installs its hook on proxy; install it before the
// registry starts, so every answer is recorded.
func newLaggingServer(proxy *harness.FaultProxy, paths ...string) *laggingServer {
	l := &laggingServer{paths: paths, last: map[string]laggedAnswer{}, armed: map[string]laggedAnswer{}}
	proxy.Answer(func(resp *http.Response) {
		path := resp.Request.URL.Path
		// The health watch's filtered check list is not the read of every check.
		if !slices.Contains(paths, path) || resp.Request.URL.Query().Has("filter") {
			return
		}
		body, _ := io.ReadAll(resp.Body)
		index, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
		stale := resp.Request.URL.Query().Has("stale")
		l.mu.Lock()
		defer l.mu.Unlock()
		old, armed := l.armed[path]
		switch {
		case armed && stale && index > old.index:
			delete(l.armed, path)
			l.gave = append(l.gave, path)
			body = old.body
			resp.Header.Set("X-Consul-Index", strconv.FormatUint(old.index, 10))
		case !stale && slices.Contains(l.gave, path):
			l.asked = append(l.asked, path)
			fallthrough
		default:
			if index >= l.last[path].index {
				l.last[path] = laggedAnswer{body, index}
			}
		}
		resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	})
	return l
}

// lagNext arms every path with its newest answer so far; each must have one.
func (l *laggingServer) lagNext(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.paths {
		last, ok := l.last[p]
		require.True(t, ok, "%s was never answered through the proxy", p)
		l.armed[p] = last
	}
}

// given lists the paths answered late so far.
func (l *laggingServer) given() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.gave)
}

// askedLeader lists the paths read from the leader after a late answer.
func (l *laggingServer) askedLeader() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Compact(slices.Sorted(slices.Values(l.asked)))
}

// Defect (seen in TestConsulCluster, two of three servers paused, then
// resumed): a deregistration answered by a server that had not applied it
// yet was stored. The catalog moved when web-2 left; a lagging server then
// answered the read of every check (no check had vanished yet, so every
// service was re-read) or only web's read (after the check read had seen
// web-2's check vanish), each time with nothing for the answer to reach:
// web's old answer, web-2 in it, stood until web next changed.
func TestDeregistrationAnsweredByALaggingServerIsNotStored(t *testing.T) {
	for _, lagged := range [][]string{{"/v1/health/state/any", "/v1/health/service/web"}, {"/v1/health/service/web"}} {
		t.Run(strings.Join(lagged, "+"), func(t *testing.T) {
			c, proxy := consulBehindProxy(t)
			lagging := newLaggingServer(proxy, lagged...)
			f := startRegistry(t, c, func(a *Args) { a.ServerURL, a.Watch = proxy.URL, watchCatalog })
			f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80})
			f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 80})
			f.waitSynced()
			f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")
			settled(t, f.reg) // the baseline read of every check is recorded

			lagging.lagNext(t)
			require.NoError(t, f.consul.Client.Agent().ServiceDeregister("web-2"))
			f.eventuallyEndpoints("web", "127.0.0.11:80")
			assert.ElementsMatch(t, lagged, lagging.given(), "the lagging answers were given")
		})
	}
}

// Defect: KnownLeader and LastContact were ignored. A server cut off from
// the leader (the minority side of a partition) served its frozen catalog
// as truth while /debug/consulz said Consul was reachable. Consul itself
// hands such a stale read to the leader (max_stale, which the registry
// sends); an answer that comes back this old anyway (an agent or proxy
// that ignores max_stale) is refused: the last good state stays, and
// Consul shows as unreachable.
func TestAnswerFromAServerWithoutLeaderIsRefused(t *testing.T) {
	f, proxy := behindProxy(t, nil)
	var maxStale atomic.Value
	maxStale.Store("")
	proxy.Rewrite(func(r *http.Request) {
		if v := r.URL.Query().Get("max_stale"); v != "" {
			maxStale.Store(v)
		}
	})
	f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("web", "127.0.0.11:80")
	assert.Equal(t, DefaultArgs().MaxStale.String(), maxStale.Load(), "stale reads carry max_stale")

	proxy.Answer(func(resp *http.Response) {
		resp.Header.Set("X-Consul-KnownLeader", "false")
		resp.Header.Set("X-Consul-LastContact", "60000")
	})
	f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 80})
	require.Eventually(t, func() bool { return !reachable(f.reg) }, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, lastError(f.reg), "had not heard from the leader for 1m0s")
	assert.Equal(t, []string{"127.0.0.11:80"}, f.endpoints("web"), "the frozen answer is not applied")

	proxy.Answer(func(*http.Response) {})
	f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")
	assert.True(t, reachable(f.reg))
}

// The registry decodes only the fields it uses of a service's answer: what
// it makes of the slim decode (instances, endpoints, labels, locality,
// weights, health, the checks a read saw) equals what it makes of the
// answer decoded whole by Consul's client.
func TestSlimServiceAnswerConvertsAsTheWholeAnswer(t *testing.T) {
	entries := []*api.ServiceEntry{
		{
			Node: &api.Node{ID: "id-1", Node: "n1", Address: "10.0.0.1", Datacenter: "dc1",
				TaggedAddresses: map[string]string{"lan": "10.0.0.1", "wan": "198.18.0.1"}, Meta: map[string]string{"zone": "z1"}},
			Service: &api.AgentService{ID: "web-1", Service: "web", Tags: []string{"version=v1", "canary|yes"}, Port: 8080,
				Address: "10.0.1.1", Meta: map[string]string{"protocol": "grpc", "service-account": "web", "tls-mode": "istio"},
				Weights: api.AgentWeights{Passing: 3, Warning: 1}, EnableTagOverride: true,
				TaggedAddresses: map[string]api.ServiceAddress{"lan_ipv4": {Address: "10.0.1.1", Port: 8080}}},
			Checks: api.HealthChecks{
				{Node: "n1", CheckID: "serfHealth", Name: "Serf Health Status", Status: api.HealthPassing, Output: "Agent alive"},
				{Node: "n1", CheckID: "service:web-1", Status: api.HealthWarning, ServiceID: "web-1", ServiceName: "web",
					ServiceTags: []string{"version=v1"}, Type: "http", Definition: api.HealthCheckDefinition{HTTP: "http://10.0.1.1:8080/"}},
			},
		},
		{
			Node:    &api.Node{Node: "n2", Address: "10.0.0.2", Datacenter: "dc1"},
			Service: &api.AgentService{ID: "web-2", Service: "web", Port: 8080, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
			Checks: api.HealthChecks{
				{Node: "n2", CheckID: api.ServiceMaintPrefix + "web-2", Status: api.HealthCritical, ServiceID: "web-2"},
			},
		},
		{
			Node: &api.Node{Node: "n3", Address: "10.0.0.3", Datacenter: "dc1"},
			Service: &api.AgentService{ID: "web-proxy", Service: "web-sidecar-proxy", Kind: api.ServiceKindConnectProxy, Port: 21000,
				Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web"}},
		},
	}
	body, err := json.Marshal(entries)
	require.NoError(t, err)
	var whole []*api.ServiceEntry
	require.NoError(t, json.Unmarshal(body, &whole))
	var answer []serviceAnswer
	require.NoError(t, json.Unmarshal(body, &answer))
	slim := entriesOf(answer)

	c := testConverter()
	c.includeWarning = true
	want, got := c.convert("web", whole), c.convert("web", slim)
	require.NotNil(t, got.service)
	assert.Equal(t, want.endpoints, got.endpoints)
	assert.Equal(t, want.instances, got.instances)
	assert.Equal(t, want.skipped, got.skipped)
	assert.Equal(t, want.service.Ports, got.service.Ports)
	assert.Len(t, got.endpoints, 1, "web-1 (warning, weight 1, included); web-2 in maintenance")
	assert.Equal(t, "z1", got.endpoints[0].Locality.Label[len("dc1/"):])

	hw, hs := newHealthWatch(), newHealthWatch()
	hw.noteRead("web", whole, 7)
	hs.noteRead("web", slim, 7)
	assert.Equal(t, hw.views, hs.views)
	assert.Empty(t, entriesOf(nil))
}
