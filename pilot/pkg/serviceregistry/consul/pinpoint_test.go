package consul

import (
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Defect: a watch reset (Consul's index went backwards: a snapshot restore)
// forgot the services' read indexes but kept the pinpoint detector's
// ranges of vanished checks. A registration after the restore whose new,
// lower index fell inside such a range was taken as explained, and never
// read: the instance was not served until its service changed again.
func TestRestoreForgetsVanishedCheckRanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		sc.register("n1", api.AgentService{ID: "web-1", Service: "web", Address: "127.0.0.11", Port: 80}, api.HealthPassing)
		sc.register("n1", api.AgentService{ID: "web-2", Service: "web", Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		sc.register("n1", api.AgentService{ID: "api-1", Service: "api", Address: "127.0.0.13", Port: 80}, api.HealthPassing)
		reg, side := startScripted(t, sc, catalogWide)
		settle(time.Minute)
		require.True(t, reg.HasSynced())
		baseline := sc.checksIndex // the pinpoint detector's first read, after the sync
		for i := range 6 {
			sc.setHealth("n1", "api-1", []string{api.HealthWarning, api.HealthPassing}[i%2])
			settle(time.Second)
		}
		// A passing instance leaves: its check vanishes between the
		// baseline and this read, a range that explains catalog changes.
		sc.deregister("n1", "web-2")
		settle(time.Minute)
		require.Equal(t, sc.truth(), istiodView(side))

		sc.restore(baseline + 1)
		settle(time.Minute)
		// A new instance of web (same tags: the listing says nothing), at an
		// index inside the old range.
		sc.register("n1", api.AgentService{ID: "web-3", Service: "web", Address: "127.0.0.14", Port: 80}, api.HealthPassing)
		settle(time.Minute)
		assert.Equal(t, []string{"127.0.0.11:80", "127.0.0.14:80"}, istiodView(side)["web"])
	})
}

// Defect: every catalog move that names and tags did not explain cost a
// read of every check (~40 MB at 100,000 instances), run back to back
// under registration churn. Long reads are now spaced by their own
// duration (pinpointSpacing, pinpointFree): with reads that take a second,
// churn of five registrations a second costs them about a fifth of the
// time, and every registration is still served.
func TestPinpointReadsAreSpacedUnderChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 50)
		// Reading every check takes a second, as at 100,000 instances.
		var full atomic.Int32
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path == "/v1/health/state/any" {
				full.Add(1)
				time.Sleep(time.Second)
			}
			return nil, nil
		})
		reg, side := startScripted(t, sc, catalogWide)
		settle(time.Minute)
		require.True(t, reg.HasSynced())
		before := full.Load()
		const churn = time.Minute
		for i := range int(churn / (200 * time.Millisecond)) {
			// New instances of existing services, with passing checks: only a
			// pinpoint read places them.
			name := fmt.Sprintf("s-%04d", i%50)
			sc.register("n2", api.AgentService{ID: fmt.Sprintf("%s-x%d", name, i), Service: name,
				Address: fmt.Sprintf("127.2.0.%d", 1+i%250), Port: 80}, api.HealthPassing)
			time.Sleep(200 * time.Millisecond)
		}
		settle(30 * time.Second)
		pinpoints := int(full.Load() - before)
		t.Logf("%d full check reads of 1 s in %v of churn", pinpoints, churn)
		// A read and its spacing take 1 s + 4 × 0.9 s: 13 cycles in the
		// churn, and the last changes read after it.
		cycle := time.Second + pinpointSpacing*(time.Second-pinpointFree)
		assert.LessOrEqual(t, pinpoints, int(churn/cycle)+3, "about a fifth of the time")
		assert.Equal(t, sc.truth(), istiodView(side), "every registration served")
	})
}

// Found by the kind tier: the spacing was taken from any read's duration,
// failures and gate waits included. A read of every check that hung until
// its deadline (30 s) while a token was being rotated held the next one
// back for two minutes, and a new instance of an existing service was not
// served meanwhile. Only a successful request's own duration counts now,
// and no gap is longer than pinpointMaxGap.
func TestAFailedPinpointReadDoesNotDelayTheNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		sc.register("n1", api.AgentService{ID: "web-1", Service: "web", Address: "127.0.0.11", Port: 80}, api.HealthPassing)
		reg, side := startScripted(t, sc, catalogWide)
		settle(time.Minute)
		require.True(t, reg.HasSynced())
		// The next read of every check hangs until its deadline.
		var hung atomic.Bool
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if r.URL.Path == "/v1/health/state/any" && hung.CompareAndSwap(false, true) {
				<-r.Context().Done()
				return nil, r.Context().Err()
			}
			return nil, nil
		})
		sc.register("n1", api.AgentService{ID: "web-2", Service: "web", Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		settle(time.Minute)
		require.True(t, hung.Load())
		require.Equal(t, sc.truth(), istiodView(side), "placed by the read after the failed one")

		start := time.Now()
		sc.register("n1", api.AgentService{ID: "web-3", Service: "web", Address: "127.0.0.13", Port: 80}, api.HealthPassing)
		for !slices.Equal(sc.truth()["web"], istiodView(side)["web"]) && time.Since(start) < 10*time.Minute {
			settle(100 * time.Millisecond)
		}
		took := time.Since(start)
		t.Logf("a new instance after the failed read served in %v", took)
		assert.Less(t, took, 5*time.Second)
	})
}
