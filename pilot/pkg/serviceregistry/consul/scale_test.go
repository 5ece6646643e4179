package consul

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
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

// TestTenThousandServicesWithinConnectionLimit: 10,000 services sync with at
// most MaxConcurrentRequests+watches (= 36, far under Consul's 200)
// connections, and a health flip afterwards costs at most three requests:
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
	assert.LessOrEqual(t, counter.PeakConnections(), int64(DefaultArgs().MaxConcurrentRequests+watches))

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
