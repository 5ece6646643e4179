package consul

// retry.go owns how the registry retries. Two kinds of failure, two
// policies:
//   - Consul itself fails (refused, no answer in time, 429, 5xx, a token it
//     rejects): every reader waits behind one gate, and requests resume one
//     at a time, doubling while they succeed. Thousands of services failing
//     together then cost Consul a request per retry period, not thousands.
//   - One service's read fails while Consul answers others (ACLs hide its
//     nodes): that service alone is retried, slower and slower.

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Backoff bounds while Consul fails. The cap is low on purpose: the gate
// lets one request through per period, so a failing Consul gets at most a
// few requests a second per registry, and istiod converges within a
// second of Consul coming back after an outage.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// Bounds of a single service's retries: it is retried although Consul
// keeps refusing it, in case its ACLs change.
const (
	serviceRetryMin = time.Second
	serviceRetryMax = 5 * time.Minute
)

// retryDelay is exponential with jitter over the upper half: a fleet of
// istiods restarting together does not hit a recovering Consul in lock-step.
func retryDelay(failures int) time.Duration {
	return jittered(backoffMin, backoffMax, failures)
}

func jittered(lo, hi time.Duration, failures int) time.Duration {
	d := min(lo<<min(failures, 20), hi)
	return d/2 + rand.N(d/2+1)
}

// outcome is what a request tells the gate about Consul.
type outcome int

const (
	answered    outcome = iota // Consul answered (an empty or refused result included)
	unavailable                // Consul failed: refused, timed out, overloaded, stale
	slow                       // this request timed out while Consul answered others: says nothing of Consul
	abandoned                  // the caller gave up (shutdown): says nothing
)

// gate is the one brake on every request to Consul. While Consul works it
// only bounds the requests in flight (slots: MaxConcurrentRequests); the
// blocking watches pass without a slot. When a request finds Consul failing,
// the gate closes for retryDelay, then lets one request through; each
// success doubles how many may be in flight, a failure closes it again.
type gate struct {
	mu       sync.Mutex
	max      int       // slots while Consul works
	limit    int       // slots now: max, or fewer while resuming
	inflight int       // requests holding a slot
	failures int       // consecutive failed periods; 0 while Consul works
	resumeAt time.Time // no request before this while failures > 0
	hold     time.Time // no request before this at all: an overloaded Consul's Retry-After
	answer   time.Time // when Consul last answered a request
	changed  chan struct{}
	// working ends when Consul starts failing, and stays ended until it
	// answers again: a service's watch sends a blocking query only under
	// it. One sent before is cut (a wedged connection or proxy would hold
	// it until its wait runs out, minutes); one sent on an index a
	// restarted or restored Consul has not reached would wait as long.
	working context.Context
	failed  context.CancelFunc
	// failing is working's opposite: it ends when Consul answers again.
	// A read sent while Consul fails is cut then: one that reached a
	// Consul agent still starting up can stay unanswered for many seconds
	// after the agent answers new ones (docs/architecture.md), and is
	// better sent again at once.
	failing   context.Context
	recovered context.CancelFunc
}

func newGate(slots int) *gate {
	g := &gate{max: slots, limit: slots, changed: make(chan struct{})}
	g.working, g.failed = context.WithCancel(context.Background())
	g.failing, g.recovered = context.WithCancel(context.Background())
	g.recovered()
	return g
}

// whileFailing is the context that ends when Consul answers again; nil
// while it works.
func (g *gate) whileFailing() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failing.Err() != nil {
		return nil
	}
	return g.failing
}

// whileWorking is the context that ends when Consul next starts failing
// (at once, while it fails).
func (g *gate) whileWorking() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.working
}

// enter waits until a request may go. A request with slot holds one of the
// gate's slots until release; one without (a blocking watch, a hedge) only
// waits while the gate is closed. release reports what Consul did.
func (g *gate) enter(ctx context.Context, slot bool) (release func(outcome), err error) {
	for {
		g.mu.Lock()
		wait := time.Until(g.hold)
		if g.failures > 0 {
			wait = max(wait, time.Until(g.resumeAt))
		}
		if wait <= 0 && (!slot || g.inflight < g.limit) {
			if slot {
				g.inflight++
			}
			g.mu.Unlock()
			start := time.Now()
			return func(o outcome) { g.done(slot, start, o) }, nil
		}
		changed := g.changed
		g.mu.Unlock()
		if err := waitFor(ctx, changed, wait); err != nil {
			return nil, err
		}
	}
}

// waitFor waits for changed, or for d when d > 0.
func waitFor(ctx context.Context, changed <-chan struct{}, d time.Duration) error {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-changed:
	case <-timeout:
	}
	return nil
}

func (g *gate) done(slot bool, start time.Time, o outcome) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if slot {
		g.inflight--
	}
	switch o {
	case answered:
		g.answer = time.Now()
		if g.working.Err() != nil {
			g.working, g.failed = context.WithCancel(context.Background())
			g.recovered()
		}
		if g.failures > 0 || g.limit < g.max {
			g.failures = 0
			g.limit = min(g.max, 2*g.limit)
		}
	case unavailable:
		// Requests sent before the gate last closed fail together; only
		// one sent since counts, or one outage would escalate per request.
		if g.failures > 0 && start.Before(g.resumeAt) {
			break
		}
		if g.working.Err() == nil {
			g.failed()
			g.failing, g.recovered = context.WithCancel(context.Background())
		}
		g.resumeAt = time.Now().Add(retryDelay(g.failures))
		g.failures++
		g.limit = 1
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

// answeredSince says whether Consul answered any request after t.
func (g *gate) answeredSince(t time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.answer.After(t)
}

// holdUntil keeps the gate closed until t at least, as an overloaded
// Consul's Retry-After asked: an answer to a request sent before does not
// open it.
func (g *gate) holdUntil(t time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t.After(g.hold) {
		g.hold = t
	}
}

// backoff counts one reader's consecutive failures, for the pause after
// a failure the gate did not see (an answer that could not be used).
type backoff struct{ failures int }

// fail returns how long to wait before the next attempt.
func (b *backoff) fail() time.Duration {
	d := retryDelay(b.failures)
	b.failures++
	return d
}

func (b *backoff) reset() { b.failures = 0 }

// serviceRetries is the policy of one service's failed reads, as the work
// queue's rate limiter (workqueue.TypedRateLimiter).
type serviceRetries struct {
	mu       sync.Mutex
	failures map[string]int
}

func newServiceRetries() *serviceRetries { return &serviceRetries{failures: map[string]int{}} }

func (r *serviceRetries) When(name string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := jittered(serviceRetryMin, serviceRetryMax, r.failures[name])
	r.failures[name]++
	return d
}

func (r *serviceRetries) Forget(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.failures, name)
}

func (r *serviceRetries) NumRequeues(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failures[name]
}
