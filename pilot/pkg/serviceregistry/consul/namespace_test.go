package consul

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Issue #37, 8 (suspected): with Consul Enterprise namespaces, node checks
// live in the default namespace, so /v1/health/state/critical?ns=team
// does not list them, and a dead node could stay served in every other
// namespace. Disproved for the per-service watches (the default): a
// service's answer and index carry its nodes' checks across namespaces
// (Consul's parseCheckServiceNodes and updateAllServiceIndexesOfNode read
// them with a wildcard namespace), so web's instance on the dead node goes
// and comes back. The catalog-wide detector (--consulWatch=catalog, or the
// fallback over plain HTTP) does miss it: shown with this scripted server,
// open in issue #37.
func TestNodeCheckOutsideTheNamespace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		sc.enterprise = true
		sc.register("n1", api.AgentService{ID: "web-1", Service: "web", Namespace: "team", Address: "127.0.0.11", Port: 80}, api.HealthPassing)
		sc.register("n2", api.AgentService{ID: "web-2", Service: "web", Namespace: "team", Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		sc.setNodeHealth("n1", api.HealthPassing)
		sc.setNodeHealth("n2", api.HealthPassing)
		_, side := startSynced(t, sc, func(a *Args) { a.EnterpriseNamespace = "team" })
		const web = "web.service.team.ns.consul"
		require.Equal(t, []string{"127.0.0.11:80", "127.0.0.12:80"}, heldFor(side, web))

		sc.setNodeHealth("n1", api.HealthCritical)
		settle(time.Minute)
		assert.Equal(t, []string{"127.0.0.12:80"}, heldFor(side, web), "n1's node check is critical")
		sc.setNodeHealth("n1", api.HealthPassing)
		settle(time.Minute)
		assert.Equal(t, []string{"127.0.0.11:80", "127.0.0.12:80"}, heldFor(side, web), "n1 is back")
	})
}
