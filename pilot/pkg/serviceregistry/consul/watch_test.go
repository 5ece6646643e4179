package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
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
