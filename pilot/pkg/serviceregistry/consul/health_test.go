package consul

import (
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
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
		reg, side := startScripted(t, sc, catalogWide)
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

// Defect (issue #37, 3): a health mark asked the service's next read for
// the view's index + 1, not for the index of the check write it had seen.
// Behind round-robin servers, a lagging follower's answer from between the
// view and the flip passed, was stored, and the flip was lost until the
// service next changed. Here a write that moves web's index without
// changing its health (a check output, which the health watch does not
// compare) comes between the view and the flip, and the first stale read
// after the flip is answered as of that write.
func TestFlipAnsweredByAFollowerBehindItIsNotStored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerWeb(sc)
		reg, side := startScripted(t, sc, catalogWide)
		settle(time.Minute)
		require.Equal(t, sc.truth(), istiodView(side))

		// An output-only write: web's index moves, its health does not.
		sc.write(func(idx uint64) { sc.serviceIndex["web"] = idx })
		req, err := http.NewRequest(http.MethodGet, "http://consul.invalid/v1/health/service/web", nil)
		require.NoError(t, err)
		between, err := sc.RoundTrip(req)
		require.NoError(t, err)
		body, err := io.ReadAll(between.Body)
		require.NoError(t, err)
		betweenIndex := between.Header.Get("X-Consul-Index")

		var lagged, leaderReads atomic.Int32
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path != "/v1/health/service/web" {
				return nil, nil
			}
			if !r.URL.Query().Has("stale") {
				leaderReads.Add(1)
				return nil, nil
			}
			if lagged.CompareAndSwap(0, 1) {
				index, _ := strconv.ParseUint(betweenIndex, 10, 64)
				return respond(http.StatusOK, body, index), nil
			}
			return nil, nil
		})
		sc.setHealth("n1", "web-2", api.HealthCritical)
		settle(time.Second)
		require.EqualValues(t, 1, lagged.Load(), "the follower's answer was given")
		assert.Positive(t, leaderReads.Load(), "the registry asked the leader")
		assert.Equal(t, sc.truth(), istiodView(side), "the flip is served")
		assert.Equal(t, []string{"127.0.0.11:80"}, istiodView(side)["web"])
		assert.True(t, reg.HasSynced())
	})
}
