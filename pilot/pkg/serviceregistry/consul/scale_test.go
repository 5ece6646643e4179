package consul

import (
	"fmt"
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
// most MaxConcurrentRequests+3 (= 19, far under Consul's 200) connections,
// and a health flip afterwards costs two requests: the checks watch's
// answer and one read of the flipped service.
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

	// Let the post-sync reads settle, then flip one check.
	settled(t, f.reg)
	before := counter.Requests()
	_, _, _, err = c.Client.Txn().Txn(api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
		Node: "bulk", CheckID: "chk-svc-04242", Name: "chk", Status: api.HealthCritical, ServiceID: "svc-04242"}}}}, nil)
	require.NoError(t, err)
	f.eventuallyEndpoints("svc-04242")
	settled(t, f.reg) // extra reads (a full re-read) would be queued by now
	used := counter.Requests() - before
	t.Logf("one health flip cost %d Consul requests", used)
	assert.LessOrEqual(t, used, int64(2))
}
