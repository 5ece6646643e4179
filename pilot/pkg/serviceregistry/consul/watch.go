package consul

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
)

// Backoff bounds for failed Consul reads. The cap is low on purpose: a
// failing read costs Consul one small request, and istiod must converge
// within a couple of seconds of Consul coming back after an outage.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 500 * time.Millisecond
)

// backoff is exponential with full jitter: a fleet of istiods restarting
// together does not hit a recovering Consul in lock-step.
type backoff struct{ next time.Duration }

func (b *backoff) fail() time.Duration {
	if b.next == 0 {
		b.next = backoffMin
	}
	d := b.next/2 + rand.N(b.next/2+1)
	b.next = min(2*b.next, backoffMax)
	return d
}

func (b *backoff) reset() { b.next = 0 }

// blockingWatch runs one Consul blocking query after another until ctx ends:
// query is called with WaitIndex set to the last index seen and returns the
// new one. No polling: each call returns only when Consul has news or the
// wait time runs out. On errors it backs off and keeps the caller's last
// good state, since it never calls back without a successful read.
func (c *Controller) blockingWatch(ctx context.Context, what string, query func(*api.QueryOptions) (uint64, error)) {
	var index uint64
	var bo backoff
	failed := false
	for ctx.Err() == nil {
		q := c.queryOptions(ctx)
		// After a failure, read without blocking: the Consul that answers may
		// be a rebuilt one whose index is below ours, and a blocking query on
		// our index would hang there until the wait time runs out.
		if !failed {
			q.WaitIndex = index
		}
		q.WaitTime = c.args.WaitTime
		next, err := query(q)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.fail()
			c.readFailed(what, err, d, !failed)
			failed = true
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		failed = false
		bo.reset()
		c.readSucceeded()
		switch {
		case next < index:
			// Consul restored a snapshot or a new leader has a lower index:
			// start over, or the watch would wait for an index never reached.
			log.Warnf("consul %s index went backwards (%d -> %d); resetting the watch and re-reading every service",
				what, index, next)
			index = 0
			c.indexReset()
		case next == 0:
			index = 1 // Consul's rule: never block on index 0 after a read
		default:
			index = next
		}
	}
}

// queryOptions are the read options every request carries.
func (c *Controller) queryOptions(ctx context.Context) *api.QueryOptions {
	q := &api.QueryOptions{Namespace: c.args.EnterpriseNamespace, Partition: c.args.Partition}
	switch c.args.Consistency {
	case "stale":
		q.AllowStale = true
	case "consistent":
		q.RequireConsistent = true
	}
	return q.WithContext(ctx)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
