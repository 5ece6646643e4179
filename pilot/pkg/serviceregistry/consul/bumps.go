package consul

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/util/sets"
)

// bumpGrace is how long after the pinpoint read the reads it queued get to
// explain a catalog change before the registry gives up and re-reads all.
const bumpGrace = time.Second

// A catalog index that moves means an instance was registered,
// re-registered or deregistered somewhere, and the catalog listing cannot say
// where (one catalog read may also cover several writes). The registry then
// reads every check once (the "pinpoint" read; coalesced, never more than one
// at a time) and queues each service with a check created or modified since
// its last read, or one that vanished. A catalog change counts as explained
// when a check was created or modified at its index, when checks vanished
// in a range of indexes that holds it, or when a service read's own index
// equals it. Anything else (an instance without checks, a re-registration
// that leaves its checks alone) makes every service be re-read once: rare,
// costly at scale, always correct. Health changes alone never move the
// catalog index, so they never cost a pinpoint read.
//
// The gap: an instance without checks that joins or leaves in the same
// catalog read as another change, or inside a range where checks vanished, is
// found only when its service is next read for another reason (README, Known
// limits).
type bumpTracker struct {
	pending []uint64 // catalog indexes not yet explained
	// gone are raft index ranges in which checks vanished (deregistrations),
	// from recent pinpoint reads: a catalog change inside one is explained,
	// even if it is seen only after the read that found the vanished check.
	gone []span
}

// span is a range (lo, hi] of raft indexes and when it was recorded.
type span struct {
	lo, hi uint64
	at     time.Time
}

// goneKeep is how long a span of vanished checks can explain catalog changes.
const goneKeep = 30 * time.Second

func (b *bumpTracker) add(index uint64) {
	for _, g := range b.gone {
		if g.lo < index && index <= g.hi {
			return
		}
	}
	b.pending = append(b.pending, index)
}

// explain marks a catalog change at index as understood.
func (b *bumpTracker) explain(index uint64) {
	for i, p := range b.pending {
		if p == index {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return
		}
	}
}

// checksVanished records that checks disappeared somewhere in (lo, hi]: a
// deregistration, whose catalog change is explained.
func (b *bumpTracker) checksVanished(lo, hi uint64, now time.Time) {
	b.gone = slices.DeleteFunc(b.gone, func(g span) bool { return now.Sub(g.at) > goneKeep })
	b.gone = append(b.gone, span{lo, hi, now})
	b.pending = slices.DeleteFunc(b.pending, func(p uint64) bool { return lo < p && p <= hi })
}

// pinpointSoon asks for a pinpoint read; requests made while one is waiting
// coalesce (the read sees every change up to when it runs).
func (c *Controller) pinpointSoon() {
	select {
	case c.pinpointCh <- struct{}{}:
	default:
	}
}

// pinpointLoop runs pinpoint reads on demand, retrying failures with backoff.
func (c *Controller) pinpointLoop(ctx context.Context) {
	var bo backoff
	// The first read records every check as the baseline for "vanished". It
	// waits for the first sync: until then every service is read anyway, and
	// the whole check list (40 MB at 100,000 instances) would only compete
	// with those reads.
	for !c.synced.Load() {
		if !sleep(ctx, 100*time.Millisecond) {
			return
		}
	}
	c.pinpointSoon()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.pinpointCh:
		}
		// The bumps this read must explain: those seen before it started.
		// (Its own index is the checks table's, which need not reach them.)
		c.mu.RLock()
		covered := slices.Clone(c.bumps.pending)
		c.mu.RUnlock()
		err := c.pinpoint(c.queryOptions(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.fail()
			c.readFailed("checks", err, d, true)
			if !sleep(ctx, d) {
				return
			}
			c.pinpointSoon()
			continue
		}
		bo.reset()
		c.readSucceeded()
		time.AfterFunc(bumpGrace, func() { c.resolveBumps(covered, 10) })
	}
}

// pinpoint reads every check and queues the services whose instances changed
// since their last read.
func (c *Controller) pinpoint(q *api.QueryOptions) error {
	c.readSlots <- struct{}{}
	checks, meta, err := c.client.Health().State(api.HealthAny, q)
	<-c.readSlots
	if err != nil {
		return fmt.Errorf("list health checks: %w", err)
	}
	if meta.ResultsFilteredByACLs && len(checks) == 0 {
		return fmt.Errorf("list health checks: %w: the token needs read on service_prefix and node_prefix", errACLFiltered)
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := make(map[checkKey]string, len(checks))
	dirty := sets.New[string]()
	vanished := false
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		seen[k] = hc.ServiceName
		if hc.ServiceName == "" {
			for name := range c.nodes[hc.Node] {
				if hc.ModifyIndex > c.fetched[name] {
					dirty.Insert(name)
				}
			}
		} else if idx, ok := c.fetched[hc.ServiceName]; !ok || hc.ModifyIndex > idx {
			// Not read yet, or a read may be in flight from before this
			// change: read (again) rather than trust it.
			dirty.Insert(hc.ServiceName)
		}
		c.bumps.explain(hc.CreateIndex)
		c.bumps.explain(hc.ModifyIndex)
	}
	if c.checks != nil {
		for k, svc := range c.checks {
			if _, ok := seen[k]; ok {
				continue
			}
			vanished = true
			if svc != "" {
				dirty.Insert(svc)
			} else {
				for name := range c.nodes[k.node] {
					dirty.Insert(name)
				}
			}
		}
	}
	if vanished {
		// Deleted after the last pinpoint read's index, at or before this one's.
		c.bumps.checksVanished(c.checksIndex, meta.LastIndex, now)
	}
	c.checks, c.checksIndex = seen, meta.LastIndex
	for name := range dirty {
		if _, ok := c.catalog[name]; ok {
			c.markDirtyLocked(name, now)
		}
	}
	return nil
}

// resolveBumps re-reads every service if a catalog change a pinpoint read
// covered is still unexplained once the reads it queued are done (waiting up
// to tries more grace periods for a busy queue).
func (c *Controller) resolveBumps(covered []uint64, tries int) {
	if c.queue.Len() > 0 && tries > 0 {
		time.AfterFunc(bumpGrace, func() { c.resolveBumps(covered, tries-1) })
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var unexplained []uint64
	c.bumps.pending = slices.DeleteFunc(c.bumps.pending, func(p uint64) bool {
		if slices.Contains(covered, p) {
			unexplained = append(unexplained, p)
			return true
		}
		return false
	})
	if len(unexplained) == 0 {
		return
	}
	consulFullReads.Increment()
	log.Debugf("consul catalog changed at %v with no check or service read to explain it: re-reading all %d services",
		unexplained, len(c.catalog))
	now := time.Now()
	for name := range c.catalog {
		c.markDirtyLocked(name, now)
	}
}
