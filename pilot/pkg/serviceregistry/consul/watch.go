package consul

// watch.go owns the blocking-query loop every catalog-wide watch (catalog.go,
// health.go, nodes.go) runs: wait on Consul's index, back off on errors, hedge reads
// after a failure, ignore answers older than the last one applied (a
// lagging server), and start over when Consul's index really went
// backwards, which the leader confirms.

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"
)

// A watchRead fetches one answer from Consul (consulClient.get with req) and
// returns its index and how to store it. The watch calls apply, one answer
// at a time.
type watchRead func(ctx context.Context, req request) (index uint64, apply func(), err error)

// minWatchGap spaces the reads of one watch: a Consul (or a proxy in
// front of it) that answers at once, again and again, gets at most ten
// reads a second from each watch, not as many as the network carries.
const minWatchGap = 100 * time.Millisecond

// blockingWatch runs one Consul blocking query after another until ctx ends:
// read is called with the last index seen. No polling: each call returns
// only when Consul has news or the wait time runs out. On errors it backs
// off and keeps the caller's last good state, since nothing is applied
// without a successful read.
func (c *Controller) blockingWatch(ctx context.Context, what string, read watchRead) {
	var index uint64
	var bo backoff
	var last time.Time
	probe := false // read without blocking next (a restore may have abandoned the query)
	for ctx.Err() == nil {
		if !sleep(ctx, minWatchGap-time.Since(last)) {
			return
		}
		last = time.Now()
		var next uint64
		var apply func()
		var err error
		blocking := bo.failures == 0 && index > 0 && !probe
		if !blocking {
			// After a failure, read without blocking: the Consul that answers
			// may be a rebuilt one whose index is below ours, and a blocking
			// query on our index would hang there until the wait time runs out.
			next, apply, err = hedgedRead(ctx, read)
		} else {
			next, apply, err = read(ctx, request{index: index})
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.fail()
			c.status.readFailed(what, err, d)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		probe = blocking && next == index && cutShort(last, c.consul.wait)
		log.Debugf("consul %s read: index %d -> %d", what, index, next)
		bo.reset()
		c.status.readSucceeded()
		if next < index {
			// Older than what is applied: a lagging server (behind a load
			// balancer, a follower that restarted or is catching up), or
			// Consul's index really went backwards (a snapshot restore, a
			// rebuilt cluster). Only the leader can tell: it is never behind
			// what any server answered.
			lnext, lapply, err := read(ctx, request{leader: true})
			switch {
			case err != nil:
				log.Debugf("consul %s answer at index %d is older than %d, and the leader did not answer: %v", what, next, index, err)
				continue // the next read asks again, without blocking (index stays)
			case lnext >= index:
				log.Debugf("consul %s answer at index %d is older than %d (a lagging server); the leader's is at %d", what, next, index, lnext)
				next, apply = lnext, lapply
			default:
				// Start over, or the watch would wait for an index never reached.
				log.Warnf("consul %s index went backwards (%d -> %d, confirmed by the leader); resetting the watch and re-reading every service",
					what, index, lnext)
				lapply()
				index = lnext
				c.indexReset()
				continue
			}
		}
		apply()
		index = next
	}
}

// cutShort says whether a blocking query sent at sent that answered with
// the index it waited on may have been cut short by a snapshot restore.
// Consul answers such a query at once with what it read before (its
// abandoned state store), and the next one, on the restored store, waits
// the whole wait although the index went backwards. An answer without news
// before half the wait is that, or a server whose max_query_time is
// shorter: a read that does not block tells.
func cutShort(sent time.Time, wait time.Duration) bool {
	return time.Since(sent) < wait/2
}

// hedgeAfter is how long a non-blocking read may stay unanswered before a
// fresh one is sent beside it.
const hedgeAfter = time.Second

// hedgedRead runs a non-blocking read. Requests that reach a Consul agent
// while it starts up can stay unanswered for many seconds after it answers
// new ones (docs/architecture.md), far longer than istiod may take to
// reconverge. So while the first request is pending, a fresh one is sent
// every hedgeAfter, replacing the previous fresh one: at most two
// requests in flight, and the first keeps waiting, so a Consul that is just
// slow still gets answered. The first answer wins; the rest are cancelled.
// It fails when the first request fails.
func hedgedRead(ctx context.Context, read watchRead) (uint64, func(), error) {
	type answer struct {
		index    uint64
		apply    func()
		err      error
		first    bool
		panicked any // a panic in the read, raised again in the caller's goroutine
	}
	answers := make(chan answer)
	done := make(chan struct{})
	defer close(done) // answers nobody waits for are dropped
	// send starts a request; stop cancels it and returns once it has ended.
	send := func(first bool) (stop func()) {
		rctx, cancel := context.WithCancel(ctx)
		ended := make(chan struct{})
		go func() {
			var a answer
			func() {
				defer func() {
					if v := recover(); v != nil {
						a = answer{err: fmt.Errorf("panic: %v", v), panicked: fmt.Sprintf("%v\n%s", v, debug.Stack())}
					}
				}()
				index, apply, err := read(rctx, request{})
				a = answer{index: index, apply: apply, err: err}
			}()
			a.first = first
			close(ended)
			select {
			case answers <- a:
			case <-done:
			}
		}()
		return func() { cancel(); <-ended }
	}
	stopFirst := send(true)
	defer stopFirst()
	stopFresh := func() {}
	defer func() { stopFresh() }()
	tick := time.NewTicker(hedgeAfter)
	defer tick.Stop()
	for {
		select {
		case a := <-answers:
			if a.panicked != nil {
				panic(a.panicked) // where the watch's caller recovers it (Controller.keep)
			}
			if a.err == nil {
				return a.index, a.apply, nil
			}
			if a.first {
				return 0, nil, a.err
			}
			// A fresh request failed or was replaced: the first still waits.
		case <-tick.C:
			stopFresh()
			stopFresh = send(false)
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// indexReset handles a Consul whose indexes went backwards (snapshot
// restore, a rebuilt cluster): the indexes of earlier reads mean nothing
// any more, so they are dropped, with what the pinpoint detector derived
// from them, and every service is re-read (with a watch per service,
// every watch starts over from that read, servicewatch.go).
func (c *Controller) indexReset() {
	c.store.forgetReadIndexes()
	c.health.forgetIndexes()
	c.pinpoint.reset()
	if c.perService() {
		c.services.restart()
	} else {
		c.dirty.mark(0, c.catalog.names()...)
	}
}

// sleep waits d (nothing when d <= 0); false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
