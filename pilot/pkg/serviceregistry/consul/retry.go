package consul

// retry.go owns the registry's one retry policy: every failed Consul read
// (a watch, the pinpoint read, one service) waits retryDelay before trying
// again.

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Backoff bounds for failed Consul reads. The cap is low on purpose: a
// failing read costs Consul one small request, and istiod must converge
// within a couple of seconds of Consul coming back after an outage.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// retryDelay is exponential with jitter over the upper half: a fleet of
// istiods restarting together does not hit a recovering Consul in lock-step.
func retryDelay(failures int) time.Duration {
	d := min(backoffMin<<min(failures, 16), backoffMax)
	return d/2 + rand.N(d/2+1)
}

// backoff counts one reader's consecutive failures.
type backoff struct{ failures int }

// fail returns how long to wait before the next attempt.
func (b *backoff) fail() time.Duration {
	d := retryDelay(b.failures)
	b.failures++
	return d
}

// first is true when the last fail was the first of a streak.
func (b *backoff) first() bool { return b.failures == 1 }

func (b *backoff) reset() { b.failures = 0 }

// retryLimiter is the same policy per queued service, as the work queue's
// rate limiter (workqueue.TypedRateLimiter).
type retryLimiter struct {
	mu       sync.Mutex
	failures map[string]int
}

func newRetryLimiter() *retryLimiter { return &retryLimiter{failures: map[string]int{}} }

func (r *retryLimiter) When(name string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := retryDelay(r.failures[name])
	r.failures[name]++
	return d
}

func (r *retryLimiter) Forget(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.failures, name)
}

func (r *retryLimiter) NumRequeues(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failures[name]
}
