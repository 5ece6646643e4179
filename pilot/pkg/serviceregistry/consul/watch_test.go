package consul

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

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
// by a fresh one a second later.
func TestHedgedReadOvertakesAHangingRequest(t *testing.T) {
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
	assert.Less(t, time.Since(start), hedgeAfter+time.Second)
}

// A Consul that is only slow answers the first request, however many fresh
// ones were sent and replaced meanwhile; at most two are in flight.
func TestHedgedReadWaitsForASlowConsul(t *testing.T) {
	var calls atomic.Int32
	var inflight harness.Peak
	slow := fakeRead(&calls, func(int32) time.Duration { return 3500 * time.Millisecond }, nil)
	read := func(ctx context.Context, req request) (uint64, func(), error) {
		inflight.Up()
		defer inflight.Down()
		return slow(ctx, req)
	}
	index, _, err := hedgedRead(context.Background(), read)
	require.NoError(t, err)
	assert.EqualValues(t, 101, index, "the first request's answer")
	assert.GreaterOrEqual(t, calls.Load(), int32(3), "fresh requests were sent")
	assert.LessOrEqual(t, inflight.Max(), int64(2), "requests in flight")
}

// When the first request fails, the read fails (the watch backs off), even
// if fresh requests are pending; a failing fresh request changes nothing.
func TestHedgedReadFailsWithTheFirstRequest(t *testing.T) {
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
}
