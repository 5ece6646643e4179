package consul

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// registerMany adds n services of one passing instance each.
func registerMany(sc *scriptedConsul, n int) {
	for i := range n {
		name := fmt.Sprintf("s-%04d", i)
		sc.register("n1", api.AgentService{ID: name, Service: name, Address: fmt.Sprintf("127.1.%d.%d", i/250, 1+i%250), Port: 80},
			api.HealthPassing)
	}
}

// Defect: each failed service read was retried on its own backoff (at most
// 500 ms), so when Consul answered 429 to 1,000 services istiod sent
// thousands of requests a second, bounded only by its 16 workers. The gate
// holds every reader while Consul fails: the load must stay a few requests
// a second, and everything must converge once Consul recovers.
func TestOverloadedConsulGetsAFewRequestsASecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 1000)
		tooMany := func(r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
				return respond(http.StatusTooManyRequests, []byte("rate limit exceeded"), 0), nil
			}
			return nil, nil
		}
		sc.setFault(tooMany)
		var warnings atomic.Int32
		reg, side := startScripted(t, sc, func(a *Args) { a.SyncTimeout = time.Hour }, func(c *Controller) {
			c.status.warn = func(string) { warnings.Add(1) }
		})
		settle(time.Second)
		before := sc.requestCount("/")
		const storm = time.Minute
		settle(storm)
		perSecond := float64(sc.requestCount("/")-before) / storm.Seconds()
		t.Logf("while Consul answered 429: %.1f requests/s", perSecond)
		assert.LessOrEqual(t, perSecond, 10.0, "requests per second to an overloaded Consul")
		// One warning per 30 s, not one per service (1,000 before).
		assert.LessOrEqual(t, int(warnings.Load()), 3, "warnings in %v", storm)
		assert.False(t, reg.HasSynced())

		sc.setFault(nil)
		settle(2 * time.Second)
		assert.True(t, reg.HasSynced(), "synced within 2 s of Consul recovering")
		assert.Equal(t, sc.truth(), istiodView(side))
	})
}

// Defect: a token with node_prefix read on some nodes only makes Consul
// answer [] (filtered by ACLs) for some services. Those reads failed
// forever, held HasSynced until SyncTimeout, and were retried every 500 ms
// each. Now they are served as far as Consul lets the registry see them:
// not served, with the reason in /debug/consulz, retried slowly, and the
// first sync completes without them.
func TestServicesHiddenByACLsDoNotHoldTheSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 100)
		hidden := func(path string) bool {
			var i int
			_, err := fmt.Sscanf(path, "/v1/health/service/s-%04d", &i)
			return err == nil && i < 10
		}
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if !hidden(r.URL.Path) {
				return nil, nil
			}
			resp := respond(http.StatusOK, []byte("[]"), 20)
			resp.Header.Set("X-Consul-Results-Filtered-By-ACLs", "true")
			return resp, nil
		})
		reg, side := startScripted(t, sc, func(a *Args) { a.SyncTimeout = time.Hour })
		settle(10 * time.Second)
		require.True(t, reg.HasSynced(), "the hidden services do not hold the sync")
		view := istiodView(side)
		assert.Len(t, view, 90)
		notServed := map[string]string{}
		for _, n := range reg.debugView("").NotServed {
			notServed[n.Name] = n.Reason
		}
		assert.Len(t, notServed, 10)
		assert.Contains(t, notServed["s-0003"], "needs read on its nodes (node_prefix)")

		before := 0
		for i := range 10 {
			before += sc.requestCount(fmt.Sprintf("/v1/health/service/s-%04d", i))
		}
		// Registrations elsewhere move the catalog and cost reads of every
		// check; those must not re-read the refused services.
		for i := range 20 {
			sc.register("n2", api.AgentService{ID: fmt.Sprintf("s-0050-x%d", i), Service: "s-0050", Address: "127.2.0.1",
				Port: 9000 + i}, api.HealthPassing)
			settle(30 * time.Second)
		}
		after := 0
		for i := range 10 {
			after += sc.requestCount(fmt.Sprintf("/v1/health/service/s-%04d", i))
		}
		t.Logf("10 refused services: %d reads in 10 minutes of 20 catalog changes", after-before)
		assert.LessOrEqual(t, after-before, 10*12, "each refused service is retried slower and slower (1 s to 5 min)")
		assert.True(t, reg.debugView("").Consul.Reachable, "Consul answers: it is reachable")
	})
}
