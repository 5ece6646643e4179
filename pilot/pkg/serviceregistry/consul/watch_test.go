package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// fakeRead answers the n-th request (from 1) after delay(n), or fails with
// err(n) if set; a cancelled request ends with its context's error.
func fakeRead(calls *atomic.Int32, delay func(n int32) time.Duration, err func(n int32) error) watchRead {
	return func(ctx context.Context, _ request) (uint64, func(), error) {
		n := calls.Add(1)
		select {
		case <-time.After(delay(n)):
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
		if err != nil {
			if e := err(n); e != nil {
				return 0, nil, e
			}
		}
		return uint64(100 + n), func() {}, nil
	}
}

// A request that Consul leaves hanging (as during its start-up) is overtaken
// by a fresh one a second later. In simulated time: the answer comes at
// hedgeAfter exactly, however loaded the machine.
func TestHedgedReadOvertakesAHangingRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		read := fakeRead(&calls, func(n int32) time.Duration {
			if n == 1 {
				return time.Hour
			}
			return 0
		}, nil)
		start := time.Now()
		index, apply, err := hedgedRead(context.Background(), read)
		require.NoError(t, err)
		assert.EqualValues(t, 102, index, "the fresh request's answer")
		assert.NotNil(t, apply)
		assert.Equal(t, hedgeAfter, time.Since(start))
	})
}

// A Consul that is only slow answers the first request, however many fresh
// ones were sent and replaced meanwhile; at most two are in flight.
func TestHedgedReadWaitsForASlowConsul(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		var inflight harness.Peak
		slow := fakeRead(&calls, func(int32) time.Duration { return 3500 * time.Millisecond }, nil)
		read := func(ctx context.Context, req request) (uint64, func(), error) {
			inflight.Up()
			defer inflight.Down()
			return slow(ctx, req)
		}
		start := time.Now()
		index, _, err := hedgedRead(context.Background(), read)
		require.NoError(t, err)
		assert.EqualValues(t, 101, index, "the first request's answer")
		assert.Equal(t, 3500*time.Millisecond, time.Since(start))
		assert.EqualValues(t, 4, calls.Load(), "the first, and a fresh one at 1, 2 and 3 s")
		assert.LessOrEqual(t, inflight.Max(), int64(2), "requests in flight")
	})
}

// When the first request fails, the read fails (the watch backs off), even
// if fresh requests are pending; a failing fresh request changes nothing.
func TestHedgedReadFailsWithTheFirstRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		refused := errors.New("connection refused")
		read := fakeRead(&calls, func(n int32) time.Duration {
			if n == 1 {
				return 2500 * time.Millisecond
			}
			return time.Hour
		}, func(n int32) error {
			if n == 1 {
				return refused
			}
			return nil
		})
		_, _, err := hedgedRead(context.Background(), read)
		require.ErrorIs(t, err, refused)
	})
}

// Defect: an answer without X-Consul-Index looked like an index going
// backwards every other read, and each time every service was re-read, with
// no pause between reads. Consul always sends the header; a proxy in front
// of it may drop it. Such answers are now an error that names the cause:
// the last good state is kept, requests are paced by the gate, and the
// registry follows Consul again once the header is back.
func TestAnswersWithoutIndexAreRefused(t *testing.T) {
	f, proxy := behindProxy(t, nil)
	for i := range 20 {
		f.register(api.AgentServiceRegistration{ID: fmt.Sprintf("p-%d", i), Name: fmt.Sprintf("p-%d", i),
			Address: "127.0.0.70", Port: 80 + i})
	}
	f.waitSynced()
	// Every service served before the header goes: the workers read in any
	// order, so p-19 served says nothing of p-3.
	for i := range 20 {
		f.eventuallyEndpoints(fmt.Sprintf("p-%d", i), fmt.Sprintf("127.0.0.70:%d", 80+i))
	}
	settled(t, f.reg)
	var refused atomic.Int64 // answers stripped of their index
	proxy.Answer(func(resp *http.Response) {
		resp.Header.Del("X-Consul-Index")
		refused.Add(1)
	})
	f.setHealth("p-3", api.HealthCritical)
	require.Eventually(t, func() bool { return strings.Contains(lastError(f.reg), "without X-Consul-Index") },
		30*time.Second, 10*time.Millisecond, "the registry refuses the answers")
	// The rate over a measured window of 20 refused answers: the gate and
	// the watches' backoff let a few requests a second through (each watch
	// at most one per 50-500 ms backoff, the workers one per gate period).
	// Ten is twice that; reads that re-read every service each time, as the
	// defect did, send hundreds.
	before, answers, start := proxy.Requests(), refused.Load(), time.Now()
	require.Eventually(t, func() bool { return refused.Load() >= answers+20 }, 60*time.Second, 10*time.Millisecond)
	elapsed := time.Since(start)
	rate := float64(proxy.Requests()-before) / elapsed.Seconds()
	t.Logf("without X-Consul-Index: %.1f requests/s over %v", rate, elapsed.Round(time.Millisecond))
	assert.LessOrEqual(t, rate, 10.0, "requests per second")
	assert.False(t, reachable(f.reg))
	assert.Len(t, f.endpoints("p-3"), 1, "last good state kept")

	proxy.Answer(func(*http.Response) {})
	f.eventuallyEndpoints("p-3")
	assert.True(t, reachable(f.reg))
}

// Defect (issue #37, 7): three answers older than the last applied, in a
// row, counted as Consul's index going backwards. Behind a load balancer a
// follower that restarted (a rolling upgrade) answers older for longer
// than that: every read index was zeroed, and the follower's older
// answers, accepted from then on, reverted flips. Only the leader can say
// the index went backwards: here the followers' stale answers of every
// watch stay at a snapshot from before a flip, over and over, while the
// leader moves on; no reset happens and the flip stays served. A restore
// (the leader too goes back) still resets.
func TestLaggingFollowerIsNotAnIndexReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 10)
		reg, side := startScripted(t, sc, func(a *Args) { a.WaitTime = 10 * time.Second })
		settle(time.Minute)
		require.Equal(t, sc.truth(), istiodView(side))

		// A follower frozen at this moment answers every stale read.
		frozen := map[string]*http.Response{}
		var mu sync.Mutex
		snapshot := func(path string) *http.Response {
			req, err := http.NewRequest(http.MethodGet, "http://consul.invalid"+path, nil)
			require.NoError(t, err)
			resp, err := sc.RoundTrip(req)
			require.NoError(t, err)
			return resp
		}
		for _, p := range append(slices.Clone(watchPaths), "/v1/health/service/s-0003") {
			frozen[p] = snapshot(p)
		}
		bodies := map[string][]byte{}
		for p, r := range frozen {
			b, err := io.ReadAll(r.Body)
			require.NoError(t, err)
			bodies[p] = b
		}
		var staleAnswers atomic.Int32
		sc.setHealth("n1", "s-0003", api.HealthCritical)
		settle(time.Second)
		require.Equal(t, sc.truth(), istiodView(side), "the flip is served")
		sc.setFault(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			old, ok := frozen[r.URL.Path]
			if !ok || !r.URL.Query().Has("stale") {
				return nil, nil
			}
			staleAnswers.Add(1)
			index, _ := strconv.ParseUint(old.Header.Get("X-Consul-Index"), 10, 64)
			return respond(http.StatusOK, bodies[r.URL.Path], index), nil
		})
		// Other services change meanwhile, on the leader.
		for i := range 20 {
			sc.setHealth("n1", fmt.Sprintf("s-%04d", 5+i%3), []string{api.HealthCritical, api.HealthPassing}[i%2])
			settle(2 * time.Second)
		}
		assert.Greater(t, staleAnswers.Load(), int32(20), "the follower answered many reads")
		assert.Equal(t, sc.truth(), istiodView(side), "no flip reverted, every change served")
		sc.setFault(nil)

		// A real restore: the leader goes back too. (A query sent after it
		// at the old index waits out its wait time.)
		sc.restore(12)
		sc.setHealth("n1", "s-0003", api.HealthPassing)
		settle(time.Minute)
		assert.Equal(t, sc.truth(), istiodView(side), "after a restore, Consul's truth")
		assert.True(t, reg.HasSynced())
	})
}
