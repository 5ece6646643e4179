package consul

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
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

// loadCatalog registers n services × 1 instance, each with a passing check,
// through Consul's transaction API (128 operations per transaction).
func loadCatalog(t *testing.T, c *api.Client, n int) {
	t.Helper()
	ops := api.TxnOps{{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: "bulk", Address: "127.0.1.1"}}}}
	flush := func() {
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		require.NoError(t, err)
		require.True(t, ok, "txn errors: %v", resp.Errors)
		ops = ops[:0]
	}
	for i := range n {
		id := fmt.Sprintf("svc-%05d", i)
		ops = append(ops,
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "bulk",
				Service: api.AgentService{ID: id, Service: id, Port: 8000 + i%1000, Address: fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250)}}},
			&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{Node: "bulk",
				CheckID: "chk-" + id, Name: "chk", Status: api.HealthPassing, ServiceID: id}}})
		if len(ops) >= 126 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
}

// TestTenThousandServicesWithinConnectionLimit: over plain HTTP, a watch per
// service for 10,000 services would need 10,000 connections (Consul's
// HTTP/1.1), so the registry falls back to the catalog-wide watches and
// says so. 10,000 services sync within --consulMaxConnections (about
// MaxConcurrentRequests + twice the watches: each watch's first read may be
// hedged), under Consul's 200, and a health flip afterwards costs at most three requests:
// the answer of the watch of the status the check entered, one read of the
// flipped service and, while no check has the other status, that watch's
// empty answer (Consul's status index cannot watch an empty subtree, so
// such a watch wakes on every check write). Each answer lists only checks
// of one status: no answer costs Consul a pass over every check.
func TestTenThousandServicesWithinConnectionLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 10,000 services; skipped with -short")
	}
	const n = 10000
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	loadCatalog(t, c.Client, n)

	counter, err := harness.StartFaultProxy(t, c.URL())
	require.NoError(t, err)
	parked := newParkedWatches(counter)
	start := time.Now()
	// The default blocking-query wait: no watch times out (and re-asks)
	// while the flip's requests are counted.
	f := startRegistry(t, c, func(a *Args) { a.ServerURL, a.WaitTime = counter.URL, DefaultArgs().WaitTime })
	require.Eventually(t, f.reg.HasSynced, 120*time.Second, 10*time.Millisecond)
	took := time.Since(start)
	services := len(f.reg.Services())
	t.Logf("synced %d services in %v with %d requests, peak %d connections", services, took,
		counter.Requests(), counter.PeakConnections())
	assert.Equal(t, n+1, services, "every service (plus consul itself)")
	// The reads that do not block, the watches and their hedges (a hedge
	// replaces a request that waits, and the proxy counts a connection
	// until it has closed): about MaxConcurrentRequests + 2 × watches,
	// and never beyond --consulMaxConnections.
	assert.LessOrEqual(t, counter.PeakConnections(), int64(DefaultArgs().MaxConnections))
	view := f.reg.debugView("").Consul
	assert.Equal(t, watchCatalog, view.Watch, "fell back to the catalog-wide watches")
	assert.Zero(t, view.ServiceWatches, "no watch per service is left running")

	// Quiet is an event: the registry is idle, and every watch waits on a
	// blocking query it sent after its latest answer. (Consul answers every
	// watch a write wakes together, before the read of the flipped service
	// that the flip waits for: a woken watch's answer has reached the proxy
	// by then.)
	quiet := func() {
		t.Helper()
		settled(t, f.reg)
		require.Eventually(t, func() bool { return f.reg.idle() && parked.all() },
			30*time.Second, 10*time.Millisecond, "every watch waits again after its latest answer")
	}
	// Let the post-sync reads settle, then flip checks one at a time.
	quiet()
	flip := func(svc, status string) int64 {
		before := counter.Requests()
		_, _, _, err := c.Client.Txn().Txn(api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
			Node: "bulk", CheckID: "chk-" + svc, Name: "chk", Status: status, ServiceID: svc}}}}, nil)
		require.NoError(t, err)
		f.eventuallyEndpoints(svc) // warning is unhealthy by default, as critical
		quiet()
		used := counter.Requests() - before
		t.Logf("%s turning %s cost %d Consul requests", svc, status, used)
		return used
	}
	assert.LessOrEqual(t, flip("svc-04242", api.HealthCritical), int64(3), "no check is warning: its watch answers too")
	assert.LessOrEqual(t, flip("svc-04243", api.HealthWarning), int64(2), "the warning watch and the read")
	assert.LessOrEqual(t, flip("svc-04244", api.HealthCritical), int64(2), "both statuses held: the critical watch alone wakes")
}

// parkedWatches follows, through a fault proxy, each watch's blocking
// query: the index it waits on, whether it waits at all (sent, and not yet
// answered or given up), and the index of its latest answer.
type parkedWatches struct {
	mu       sync.Mutex
	waiting  map[string]int    // path -> requests sent and not answered
	index    map[string]uint64 // path -> the index of the last request
	answered map[string]uint64 // path -> the index of the last answer
}

var watchPaths = []string{"/v1/catalog/services", "/v1/catalog/nodes", "/v1/health/state/critical", "/v1/health/state/warning"}

func newParkedWatches(p *harness.FaultProxy) *parkedWatches {
	w := &parkedWatches{waiting: map[string]int{}, index: map[string]uint64{}, answered: map[string]uint64{}}
	p.Rewrite(func(r *http.Request) {
		path := r.URL.Path
		w.mu.Lock()
		defer w.mu.Unlock()
		w.waiting[path]++
		w.index[path], _ = strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
		// The proxy's request context ends once the answer is sent or the
		// registry gave the request up (a hedge replaced it).
		go func() {
			<-r.Context().Done()
			w.mu.Lock()
			defer w.mu.Unlock()
			w.waiting[path]--
		}()
	})
	p.Answer(func(resp *http.Response) {
		index, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
		w.mu.Lock()
		defer w.mu.Unlock()
		w.answered[resp.Request.URL.Path] = index
	})
	return w
}

// all says whether every watch waits on the index of its latest answer.
func (w *parkedWatches) all() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, path := range watchPaths {
		if w.waiting[path] != 1 || w.index[path] != w.answered[path] {
			return false
		}
	}
	return true
}

// TestTenThousandServicesOverHTTP2: over HTTPS, Consul speaks HTTP/2 and
// one connection carries 250 requests, so each of 10,000 services has a
// watch of its own within about 41 connections. A change then costs what it
// changes: a health flip, or an instance registered into a service that
// exists, is the answer to that service's watch and the query sent after
// it, and nothing else reads a service. (The listing, the only answer of
// Consul's that names new services, wakes on every registration too: it
// is counted apart, docs/performance.md.)
func TestTenThousandServicesOverHTTP2(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 10,000 services; skipped with -short")
	}
	const n = 10000
	dir := t.TempDir()
	ca, err := harness.NewCA(dir, "consul")
	require.NoError(t, err)
	srvCert, srvKey, err := ca.Issue("server", []string{"server.dc1.consul"}, nil)
	require.NoError(t, err)
	ports, err := harness.FreePorts(1)
	require.NoError(t, err)
	c, err := harness.StartConsul(t, func(c *harness.ConsulConfig) {
		c.TLS = &harness.ConsulTLS{Port: ports[0], CAFile: ca.CertFile, CertFile: srvCert, KeyFile: srvKey}
	})
	require.NoError(t, err)
	loadCatalog(t, c.Client, n)

	conns := &connCounter{}
	sent := &pathCounter{counts: map[string]int{}}
	f := startRegistryWith(t, c, newIstiodSide(), func(a *Args) {
		a.ServerURL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
		a.Auth.CAFile, a.Auth.TLSServerName = ca.CertFile, "server.dc1.consul"
		a.WaitTime = DefaultArgs().WaitTime
	}, func(reg *Controller) {
		base := reg.consul.transport.base.(*http.Transport)
		material, err := newTLSFiles(reg.args.Auth)
		require.NoError(t, err)
		base.DialTLSContext = material.dialTLS(conns.wrap((&net.Dialer{}).DialContext), 10*time.Second)
		sent.base = base
		reg.consul.transport.base = sent
	})
	start := time.Now()
	require.Eventually(t, f.reg.HasSynced, 120*time.Second, 10*time.Millisecond)
	t.Logf("synced %d services in %v: %d connections opened, at most %d at once", len(f.reg.Services()), time.Since(start),
		conns.dialed.Load(), conns.most.Load())
	assert.Equal(t, n+1, len(f.reg.Services()), "every service (plus consul itself)")
	view := f.reg.debugView("").Consul
	assert.Equal(t, watchServices, view.Watch, "a watch per service")
	assert.True(t, view.HTTP2, "/debug/consulz says Consul answers over HTTP/2")
	assert.Equal(t, n+1, view.ServiceWatches)
	// While the watches start, net/http dials for requests that find every
	// connection full, and closes the dials it finds it did not need: the
	// peak stays inside the budget (MaxConnsPerHost); at rest, HTTP/2
	// carries the watches 250 to a connection.
	assert.LessOrEqual(t, conns.most.Load(), int64(DefaultArgs().MaxConnections), "--consulMaxConnections holds")
	settled(t, f.reg)
	streams := (n + 1 + 2 + http2Streams - 1) / http2Streams
	require.Eventually(t, func() bool { return conns.open.Load() <= int64(streams+1) }, 30*time.Second, 10*time.Millisecond,
		"at rest, HTTP/2 carries the watches %d to a connection: %d connections held", http2Streams, conns.open.Load())
	t.Logf("at rest: %d connections held", conns.open.Load())

	// One change, then wait until the registry is idle and the service's
	// watch has sent its next query: the count is then complete.
	change := func(what, svc string, write func()) {
		t.Helper()
		settled(t, f.reg)
		path := "/v1/health/service/" + svc
		before := sent.snapshot()
		write()
		require.Eventually(t, func() bool { return sent.snapshot()[path] > before[path] }, 30*time.Second, 10*time.Millisecond,
			"%s: the watch of %s asks again", what, svc)
		settled(t, f.reg)
		after := sent.snapshot()
		other := 0
		for p, k := range after {
			if p != path && p != "/v1/catalog/services" && strings.HasPrefix(p, "/v1/") {
				other += k - before[p]
			}
		}
		t.Logf("%s: %d request(s) for %s after its watch's answer, %d listing(s), %d other", what, after[path]-before[path], svc,
			after["/v1/catalog/services"]-before["/v1/catalog/services"], other)
		assert.Equal(t, 1, after[path]-before[path], "%s: the watch's next query, and no read of %s", what, svc)
		assert.Zero(t, other, "%s: no other service is read", what)
	}
	setCheck := func(svc, status string) func() {
		return func() {
			_, _, _, err := c.Client.Txn().Txn(api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: "bulk", CheckID: "chk-" + svc, Name: "chk", Status: status, ServiceID: svc}}}}, nil)
			require.NoError(t, err)
		}
	}
	change("a flip", "svc-04242", setCheck("svc-04242", api.HealthCritical))
	f.eventuallyEndpoints("svc-04242")
	change("a flip back", "svc-04242", setCheck("svc-04242", api.HealthPassing))
	f.eventuallyEndpoints("svc-04242", "127.1.16.243:8242")
	change("a registration", "svc-04243", func() {
		_, _, _, err := c.Client.Txn().Txn(api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "bulk",
			Service: api.AgentService{ID: "svc-04243-b", Service: "svc-04243", Port: 9999, Address: "127.2.0.1"}}}}, nil)
		require.NoError(t, err)
	})
	f.eventuallyEndpoints("svc-04243", "127.1.16.244:8243", "127.2.0.1:9999")
	// A new service is listed, watched and served.
	_, _, _, err = c.Client.Txn().Txn(api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: "bulk",
		Service: api.AgentService{ID: "brand-new", Service: "brand-new", Port: 7000, Address: "127.2.0.2"}}}}, nil)
	require.NoError(t, err)
	f.eventuallyEndpoints("brand-new", "127.2.0.2:7000")
	assert.Equal(t, n+2, f.reg.services.count())
}

// connCounter counts the TCP connections a dialer opened and still holds,
// and the most held at once. It wraps the dialer under TLS: net/http speaks
// HTTP/2 only on the *tls.Conn the registry's TLS dialer returns.
type connCounter struct{ open, most, dialed atomic.Int64 }

func (c *connCounter) wrap(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.dialed.Add(1)
		now := c.open.Add(1)
		for m := c.most.Load(); now > m && !c.most.CompareAndSwap(m, now); m = c.most.Load() {
		}
		return &countedConn{Conn: conn, c: c}, nil
	}
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.c.open.Add(-1) })
	return c.Conn.Close()
}

// pathCounter counts the requests sent, by path.
type pathCounter struct {
	base   http.RoundTripper
	mu     sync.Mutex
	counts map[string]int
}

func (p *pathCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	p.mu.Lock()
	p.counts[r.URL.Path]++
	p.mu.Unlock()
	return p.base.RoundTrip(r)
}

func (p *pathCounter) snapshot() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
}
