package consul

import (
	"fmt"
	"sort"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file run the whole registry (everything Run starts)
// inside a synctest bubble against scriptedConsul, so hours pass in
// milliseconds: every timer, backoff and blocking-query wait runs past its
// longest period.

// startScripted runs a registry against sc inside the calling bubble; it is
// stopped (and Run has returned) at cleanup.
func startScripted(t *testing.T, sc *scriptedConsul, edit func(*Args), before ...func(*Controller)) (*Controller, *istiodSide) {
	t.Helper()
	args := DefaultArgs()
	args.ServerURL = "http://consul.invalid:8500"
	if edit != nil {
		edit(&args)
	}
	require.NoError(t, args.Complete(func(string) string { return "" }))
	side := newIstiodSide()
	reg, err := New(args, Options{XDSUpdater: side})
	require.NoError(t, err)
	reg.consul.transport.base = sc
	reg.AppendServiceHandler(side.handler)
	for _, f := range before {
		f(reg)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { reg.Run(stop); close(done) }()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return reg, side
}

// istiodView is what istiod holds from the registry: "addr:port" of every
// healthy endpoint, by Consul service name (services with none are absent).
func istiodView(side *istiodSide) map[string][]string {
	out := map[string][]string{}
	for hostname, byNS := range side.index.Shardz() {
		name, ok := cutSuffix(hostname, ".service.consul")
		if !ok {
			continue
		}
		for _, shards := range byNS {
			shards.RLock()
			for _, eps := range shards.Shards {
				for _, ep := range eps {
					out[name] = append(out[name], fmt.Sprintf("%s:%d", ep.Addresses[0], ep.EndpointPort))
				}
			}
			shards.RUnlock()
		}
		if len(out[name]) == 0 {
			delete(out, name)
		}
		sort.Strings(out[name])
	}
	return out
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) < len(suffix) || s[len(s)-len(suffix):] != suffix {
		return s, false
	}
	return s[:len(s)-len(suffix)], true
}

// settle lets the bubble run until every reader is blocked on Consul again
// with nothing left to do, d of simulated time included.
func settle(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// Defect: with no catalog change for an hour, the pinpoint loop's idle timer
// fired and judged a verdict that did not exist: an index-out-of-range panic
// in a goroutine without recover, which ended istiod. Health flips do not
// move the catalog index, so a night with only flips is such an hour.
func TestQuietHourKeepsServing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		sc.register("n1", api.AgentService{ID: "web-1", Service: "web", Address: "127.0.0.11", Port: 80}, api.HealthPassing)
		sc.register("n1", api.AgentService{ID: "web-2", Service: "web", Address: "127.0.0.12", Port: 80}, api.HealthPassing)
		reg, side := startScripted(t, sc, nil)
		settle(time.Minute)
		require.True(t, reg.HasSynced())
		require.Equal(t, sc.truth(), istiodView(side))

		for hour := range 3 {
			settle(61 * time.Minute)
			sc.setHealth("n1", "web-2", map[bool]string{true: api.HealthCritical, false: api.HealthPassing}[hour%2 == 0])
			settle(time.Second)
			assert.Equal(t, sc.truth(), istiodView(side), "after quiet hour %d", hour+1)
		}
	})
}
