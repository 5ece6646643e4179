package consul

import (
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A panic anywhere in the registry is recovered, logged, counted and shown
// in /debug/consulz, and what panicked starts again; it never ends istiod
// (docs/reliability.md: every replica reads the same catalog, so a panic
// Consul's data provokes would crash them all together, again and again).
func TestPanicsAreRecoveredAndRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		sc.register("n1", api.AgentService{ID: "web-1", Service: "web", Address: "127.0.0.11", Port: 80}, api.HealthPassing)
		reg, side := startScripted(t, sc, nil)
		settle(time.Minute)
		require.Equal(t, sc.truth(), istiodView(side))
		panics := func() int { return reg.debugView("").Consul.Panics }

		// In a worker: istiod panics on the first two pushes of "boom".
		var boom atomic.Int32
		side.hold(func(_, h string) {
			if h == "boom.service.consul" && boom.Add(1) <= 2 {
				panic("istiod could not take boom")
			}
		})
		sc.register("n1", api.AgentService{ID: "boom-1", Service: "boom", Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		sc.register("n1", api.AgentService{ID: "calm-1", Service: "calm", Address: "127.0.0.13", Port: 80}, api.HealthPassing)
		settle(time.Second)
		assert.Contains(t, istiodView(side), "calm", "the other services go on")
		assert.Equal(t, 2, panics())
		assert.Contains(t, reg.debugView("").Consul.LastPanic, "istiod could not take boom")
		settle(time.Minute)
		assert.Equal(t, sc.truth(), istiodView(side), "boom retried until served")

		// In a watch: reading the catalog panics once; the watch restarts.
		var once atomic.Bool
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path == "/v1/catalog/services" && once.CompareAndSwap(false, true) {
				panic("a catalog nobody expected")
			}
			return nil, nil
		})
		sc.register("n1", api.AgentService{ID: "late-1", Service: "late", Address: "127.0.0.14", Port: 80}, api.HealthPassing)
		settle(time.Minute)
		assert.Equal(t, 3, panics())
		assert.Equal(t, sc.truth(), istiodView(side), "the restarted catalog watch found late")
	})
}
