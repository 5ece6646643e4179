package consul

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
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

// Defect (issue #37, 4): 400, 404 and 408 answers (an L7 load balancer's
// timeout) counted as answers: the gate never closed and the service was
// queued again at once, so workers looped at round-trip speed. Each
// failure class is now bounded: a service refused alone (400, 404) is
// retried on its own back-off, 1 s doubling to 5 min, and does not hold
// the sync; a 408 while Consul answers others is a slow read, retried the
// same way; Consul stays reachable.
func TestRefusingAnswersDoNotSpin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 100)
		codes := map[string]int{"/v1/health/service/s-0001": http.StatusNotFound,
			"/v1/health/service/s-0002": http.StatusBadRequest, "/v1/health/service/s-0003": http.StatusRequestTimeout}
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if code, ok := codes[r.URL.Path]; ok {
				return respond(code, []byte(http.StatusText(code)), 0), nil
			}
			return nil, nil
		})
		reg, side := startScripted(t, sc, func(a *Args) { a.SyncTimeout = time.Hour })
		settle(10 * time.Second)
		before := map[string]int{}
		for path := range codes {
			before[path] = sc.requestCount(path)
		}
		all := sc.requestCount("/")
		const window = 10 * time.Minute
		settle(window)
		for path := range codes {
			n := sc.requestCount(path) - before[path]
			t.Logf("%s answered %d: %d reads in %v", path, codes[path], n, window)
			// 1 s doubling to 5 min (jittered over the upper half) is at
			// most 11 retries in 10 minutes; one a second would be 600.
			assert.LessOrEqual(t, n, 12, "%s: retried slower and slower", path)
		}
		perSecond := float64(sc.requestCount("/")-all) / window.Seconds()
		t.Logf("every request: %.2f/s", perSecond)
		// Four watches that time out once a minute and the retries above.
		assert.LessOrEqual(t, perSecond, 0.5, "requests per second while three services are refused")
		assert.True(t, reg.debugView("").Consul.Reachable, "Consul answers others: it is reachable")
		assert.Len(t, istiodView(side), 97, "every other service is served")
		notServed := map[string]string{}
		for _, n := range reg.debugView("").NotServed {
			notServed[n.Name] = n.Reason
		}
		assert.Contains(t, notServed["s-0001"], "404", "/debug/consulz says why")
		assert.Contains(t, notServed["s-0002"], "400")
	})
}

// Defect (issue #37, 5): Retry-After was ignored: an overloaded Consul (or
// a proxy in front of it) asking for ten seconds got a request every
// 100-500 ms. No request is sent before the time it names (at most 30 s).
func TestRetryAfterIsHonoured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 20)
		_, side := startSynced(t, sc, func(a *Args) { a.SyncTimeout = time.Hour })

		var mu sync.Mutex
		var overloadedAt time.Time
		var sentDuring int
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			if overloadedAt.IsZero() {
				overloadedAt = time.Now()
				resp := respond(http.StatusTooManyRequests, []byte("rate limit exceeded"), 0)
				resp.Header.Set("Retry-After", "10")
				return resp, nil
			}
			// Requests already past the gate arrive at the same (simulated)
			// instant as the 429; any later one was sent after it.
			if d := time.Since(overloadedAt); d > 0 && d < 10*time.Second {
				sentDuring++
			}
			return nil, nil
		})
		sc.setHealth("n1", "s-0005", api.HealthCritical)
		settle(30 * time.Second)
		mu.Lock()
		defer mu.Unlock()
		require.False(t, overloadedAt.IsZero(), "Consul answered 429")
		assert.Zero(t, sentDuring, "requests sent in the 10 s Retry-After asked for")
		assert.Equal(t, sc.truth(), istiodView(side), "the flip is served once the time has passed")
	})
}

// Defect (issue #37, 5): one slow read (a large or remote answer that times
// out) counted as "Consul unreachable": it closed the gate for every
// reader and dropped pilot_consul_reachable to 0. While Consul answers
// others, a slow read is retried alone and a flip elsewhere is served at
// once.
func TestASlowReadIsNotAnOutage(t *testing.T) {
	for _, watch := range []string{watchServices, watchCatalog} {
		t.Run(watch, func(t *testing.T) { testASlowReadIsNotAnOutage(t, watch) })
	}
}

func testASlowReadIsNotAnOutage(t *testing.T, watch string) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 20)
		reg, side := startSynced(t, sc, func(a *Args) { a.SyncTimeout, a.Watch = time.Hour, watch })
		// Past one timeout of s-0001's read: RequestTimeout (10 s), plus
		// the wait of the service's own watch, which is held too.
		past := 15 * time.Second
		if watch == watchServices {
			past += reg.serviceWait() * 17 / 16
		}

		// s-0001's reads are never answered: each times out after
		// RequestTimeout (10 s).
		sc.setHold(func(r *http.Request) {
			if r.URL.Path == "/v1/health/service/s-0001" {
				<-r.Context().Done()
			}
		})
		var unreachable atomic.Bool
		stopWatching := make(chan struct{})
		go func() {
			for {
				select {
				case <-stopWatching:
					return
				case <-time.After(100 * time.Millisecond):
					if !reg.debugView("").Consul.Reachable {
						unreachable.Store(true)
					}
				}
			}
		}()
		sc.setHealth("n1", "s-0001", api.HealthCritical)
		settle(past)
		sc.setHealth("n1", "s-0007", api.HealthCritical)
		settle(time.Second)
		assert.NotContains(t, istiodView(side), "s-0007", "a flip elsewhere is served within a second")
		close(stopWatching)
		assert.False(t, unreachable.Load(), "Consul never showed as unreachable")
		readError := ""
		for _, s := range reg.debugView("s-0001").Services {
			readError = s.ReadError
		}
		assert.Contains(t, readError, "a slow read", "/debug/consulz says why s-0001 is not followed")
		sc.setHold(nil)
		settle(time.Minute)
		assert.Equal(t, sc.truth(), istiodView(side))
	})
}
