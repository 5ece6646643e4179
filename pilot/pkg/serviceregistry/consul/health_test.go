package consul

import (
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Defect: node checks lived in one record shared by the node's services,
// newest read wins. When S1 was read after its node's serfHealth turned
// critical but before the health watch applied that change, the watch then
// saw nothing new, and S2 and S3 on the same node kept routing to the dead
// node (and, in reverse, stayed unrouted after it recovered).
func TestNodeCheckSeenByOneReadStillMarksItsNeighbours(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		for _, name := range []string{"s1", "s2", "s3"} {
			sc.register("n1", api.AgentService{ID: name + "-1", Service: name, Address: "127.0.0.11", Port: 80}, api.HealthPassing)
			sc.register("n2", api.AgentService{ID: name + "-2", Service: name, Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		}
		sc.setNodeHealth("n1", api.HealthPassing)
		reg, side := startScripted(t, sc, nil)
		settle(time.Minute)
		require.True(t, reg.HasSynced())
		require.Equal(t, sc.truth(), istiodView(side))

		for i, status := range []string{api.HealthCritical, api.HealthPassing} {
			// s1 is marked by a flip of its own, and its read is slow...
			s1 := make(chan struct{})
			sc.setFault(func(r *http.Request) (*http.Response, error) {
				if r.URL.Path == "/v1/health/service/s1" {
					<-s1
				}
				return nil, nil
			})
			sc.setHealth("n2", "s1-2", []string{api.HealthWarning, api.HealthPassing}[i])
			settle(time.Second)
			// ...n1 goes critical (or back), and the health watch's answer
			// saying so is held on its way...
			health := make(chan struct{})
			sc.setHold(func(r *http.Request) {
				if r.URL.Path == "/v1/health/state/critical" && r.URL.Query().Get("index") != "" {
					<-health
				}
			})
			sc.setNodeHealth("n1", status)
			settle(time.Second)
			// ...while s1's read, answered now, sees n1's new status.
			sc.setFault(nil)
			close(s1)
			settle(time.Second)
			require.Equal(t, sc.truth()["s1"], istiodView(side)["s1"], "s1 read with n1 %s", status)
			sc.setHold(nil)
			close(health)
			settle(time.Second)
			assert.Equal(t, sc.truth(), istiodView(side), "every service on n1 follows it to %s", status)
		}
	})
}
