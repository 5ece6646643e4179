package consul

import (
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Defect: the first sync gave up after SyncTimeout (30 s) whatever it was
// doing, and 10,000 services took 15-32 s to read: istiod went ready with
// part of the catalog, and proxies connecting then lost the clusters of
// every service not yet read. A sync that makes progress, however slowly,
// now runs to its end; only SyncTimeout without a single successful read
// releases readiness.
func TestSlowFirstSyncIsNotCutShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 200)
		// One worker, each read takes a second: 200 s to sync.
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
				time.Sleep(time.Second)
			}
			return nil, nil
		})
		reg, side := startScripted(t, sc, func(a *Args) { a.MaxConcurrentRequests = 1 })
		settle(2 * DefaultArgs().SyncTimeout)
		assert.False(t, reg.HasSynced(), "not ready with part of the catalog")
		settle(3 * time.Minute)
		require.True(t, reg.HasSynced())
		assert.Equal(t, sc.truth(), istiodView(side), "ready with everything")
		assert.False(t, reg.sync.timedOut.Load())
	})
}

// An unreachable Consul releases readiness after SyncTimeout without a
// successful read, loudly (TestSyncTimeoutReleasesReadiness covers a
// Consul that never answered; here it dies in the middle of the sync).
func TestSyncTimeoutCountsFromTheLastProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 200)
		reads := 0
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			if !strings.HasPrefix(r.URL.Path, "/v1/health/service/") {
				return nil, nil
			}
			if reads++; reads > 100 {
				return nil, &netError{"connection refused"}
			}
			time.Sleep(time.Second)
			return nil, nil
		})
		reg, _ := startScripted(t, sc, func(a *Args) { a.MaxConcurrentRequests = 1 })
		settle(100*time.Second + DefaultArgs().SyncTimeout - 2*time.Second)
		assert.False(t, reg.HasSynced(), "SyncTimeout counts from the last successful read")
		settle(5 * time.Second)
		assert.True(t, reg.HasSynced())
		assert.True(t, reg.sync.timedOut.Load())
	})
}

type netError struct{ msg string }

func (e *netError) Error() string { return e.msg }

// Defect: a service counted as synced when it was read, before its push,
// so the last services' endpoints could reach istiod after it reported
// ready. Holding one service's first push inside istiod holds readiness.
func TestReadyOnlyOncePushed(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	for _, r := range []api.AgentServiceRegistration{{ID: "a-1", Name: "alpha", Address: "127.0.0.31", Port: 80},
		{ID: "l-1", Name: "late", Address: "127.0.0.32", Port: 80}} {
		require.NoError(t, c.Client.Agent().ServiceRegister(&r))
	}
	held, release := make(chan struct{}), make(chan struct{})
	side := newIstiodSide()
	side.hold(func(call, h string) {
		if h == "late.service.consul" && call == "eds-cache" {
			select {
			case <-held:
			default:
				close(held)
				<-release
			}
		}
	})
	g := startRegistryWith(t, c, side, nil)
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("late was never pushed")
	}
	assert.Never(t, g.reg.HasSynced, time.Second, 10*time.Millisecond, "ready while late's push is in flight")
	close(release)
	assert.Eventually(t, g.reg.HasSynced, 5*time.Second, 10*time.Millisecond)
}
