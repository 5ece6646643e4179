package consul

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Over plain HTTP each watch holds a connection: a catalog that outgrows
// --consulMaxConnections makes the registry fall back, once and for good,
// to the catalog-wide watches, stop every service's watch, and go on
// serving every change.
func TestOutgrowingTheConnectionBudgetFallsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 2)
		// 1 read that does not block + the listing and its hedge + 2
		// watches fit 5 connections; a third service does not.
		reg, side := startSynced(t, sc, func(a *Args) { a.MaxConcurrentRequests, a.MaxConnections = 1, 5 })
		require.Equal(t, watchServices, reg.detectorName())
		assert.Equal(t, 2, reg.services.count())

		sc.setHealth("n1", "s-0001", api.HealthCritical)
		settle(time.Second)
		assert.Equal(t, sc.truth(), istiodView(side), "a flip, through the service's watch")

		sc.register("n1", api.AgentService{ID: "s-0002", Service: "s-0002", Address: "127.1.0.3", Port: 80}, api.HealthPassing)
		settle(10 * time.Second)
		assert.Equal(t, watchCatalog, reg.detectorName(), "fell back")
		assert.Zero(t, reg.services.count(), "every service's watch stopped")
		assert.Equal(t, sc.truth(), istiodView(side), "the new service is served")

		sc.setHealth("n1", "s-0002", api.HealthCritical)
		sc.setHealth("n1", "s-0001", api.HealthPassing)
		settle(10 * time.Second)
		assert.Equal(t, sc.truth(), istiodView(side), "flips, through the catalog-wide watches")
		sc.deregister("n1", "s-0000")
		settle(time.Minute)
		assert.Equal(t, sc.truth(), istiodView(side), "a deregistration")
		assert.Equal(t, watchCatalog, reg.detectorName(), "for good")
	})
}
