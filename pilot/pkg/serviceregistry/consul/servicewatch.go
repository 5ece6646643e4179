package consul

// servicewatch.go owns the per-service detector: one blocking query on
// /v1/health/service/<name> per listed service. Consul indexes each service
// on its own (service.<name>: every write to its instances, their checks,
// its nodes and their checks moves it), so a change wakes the one watch of
// the service it touched, and Consul's answer costs what that service
// holds, not the catalog. The answer is the service's read: the consumer
// (service.go) converts and pushes it without asking again, so a change
// costs two requests, the answer and the query sent after it.
//
// The catalog listing (catalog.go) only says which services exist: a watch
// starts for a new name and stops for one that left.
//
// Many watches need many requests in flight: over HTTPS, HTTP/2 carries 250
// on a connection; over plain HTTP, Consul speaks HTTP/1.1 and every watch
// holds a connection of its own. Watches are used while they fit
// --consulMaxConnections; a catalog that outgrows it falls back to the
// catalog-wide detectors (health.go, nodes.go, pinpoint.go) for good, with
// a warning and pilot_consul_catalog_fallback (docs/production-consul.md).

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// http2Streams is how many requests Consul's HTTPS listener takes on one
// HTTP/2 connection (net/http's default, which Consul keeps).
const http2Streams = 250

// serviceWatches are the running per-service watches.
type serviceWatches struct {
	mu    sync.Mutex
	ctx   context.Context // the detector's; nil before begin and after stopAll
	start func(ctx context.Context, name string, sw *serviceWatch)
	// mark asks the consumer to read services afresh; it returns the
	// marks taken before (dirtySet.markWith).
	mark    func(names []string) uint64
	running map[string]*serviceWatch
	wg      sync.WaitGroup
}

// serviceWatch is one service's watch. It blocks from the index of the
// consumer's latest read of the service, which it is told of (noteRead).
type serviceWatch struct {
	cancel context.CancelFunc
	after  uint64 // the watch starts on a read for a mark taken after this many
	mu     sync.Mutex
	taken  uint64 // the number of the mark of the consumer's latest read (mark.taken); 0 before the first
	index  uint64 // that read's index
	// refused: the consumer's latest read was refused (idle counts it
	// as read, as the dirty set does while it waits out its retry delay).
	refused bool
	read    chan struct{}
}

func newServiceWatches() *serviceWatches {
	return &serviceWatches{running: map[string]*serviceWatch{}}
}

// fits says whether a watch per service, for n services, stays inside the
// connection budget, besides the reads that do not block and the listing.
func (c *Controller) fits(n int) bool {
	streams := 1
	if c.consul.transport.http2.Load() {
		streams = http2Streams
	}
	requests := n + c.args.MaxConcurrentRequests + 2 // the listing, and its hedge
	return (requests+streams-1)/streams <= c.args.MaxConnections
}

// perService says whether the per-service watches are the detector.
func (c *Controller) perService() bool { return c.detector.Load() == detectorServices }

// The detector: undecided until the first listing, then services or, for
// good, the catalog-wide watches.
const (
	detectorUndecided int32 = iota
	detectorServices
	detectorCatalog
)

// detectorName is the detector for /debug/consulz ("" before the first listing).
func (c *Controller) detectorName() string {
	switch c.detector.Load() {
	case detectorServices:
		return watchServices
	case detectorCatalog:
		return watchCatalog
	}
	return ""
}

// chooseDetector picks the detector for a listing of n services: the
// per-service watches while they fit (and --consulWatch=services), else
// the catalog-wide ones, which then stay. It reports whether the
// catalog-wide detectors start now.
func (c *Controller) chooseDetector(n int) (fellBack bool) {
	current := c.detector.Load()
	if current == detectorCatalog {
		return false
	}
	if c.args.Watch == watchServices && c.fits(n) {
		if current == detectorUndecided {
			c.detector.Store(detectorServices)
			close(c.decided)
			c.metrics.fallback.Record(0)
			log.Infof("consul registry %s: watching each of %d services on its own", c.opts.ClusterID, n)
		}
		return false
	}
	c.detector.Store(detectorCatalog)
	if current == detectorUndecided {
		close(c.decided)
	}
	if c.args.Watch == watchServices {
		c.metrics.fallback.Record(1)
		transport := "plain HTTP (HTTP/1.1: a connection per watch)"
		if c.consul.transport.http2.Load() {
			transport = fmt.Sprintf("HTTP/2 (%d watches per connection)", http2Streams)
		}
		log.Warnf("consul registry %s: %d services need more than --consulMaxConnections=%d connections over %s; "+
			"FALLING BACK to the catalog-wide watches, which take seconds per registration at this size and cost Consul a walk "+
			"of the catalog per registration. Use HTTPS, or raise Consul's limits.http_max_conns_per_client and "+
			"--consulMaxConnections (docs/production-consul.md)", c.opts.ClusterID, n, c.args.MaxConnections, transport)
	}
	return true
}

// begin lets watches start under ctx, each first read through mark; end
// stops them and returns once every one has ended.
func (w *serviceWatches) begin(ctx context.Context, watch func(ctx context.Context, name string, sw *serviceWatch), mark func([]string) uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctx, w.start, w.mark = ctx, watch, mark
}

func (w *serviceWatches) end() {
	w.stopAll()
	w.wg.Wait()
}

// follow starts a watch for each listed service without one, once the
// consumer has read it, and stops those of services no longer listed.
func (w *serviceWatches) follow(names []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx == nil || w.ctx.Err() != nil {
		return
	}
	listed := make(map[string]struct{}, len(names))
	var started []string
	for _, name := range names {
		listed[name] = struct{}{}
		if w.running[name] == nil {
			started = append(started, name)
		}
	}
	for name, sw := range w.running {
		if _, ok := listed[name]; !ok {
			sw.cancel()
			delete(w.running, name)
		}
	}
	w.startLocked(started)
}

// restart starts every watch over from a fresh read: Consul's index went
// backwards (a snapshot restore, a rebuilt cluster), and a query on an
// index from before would wait its whole wait.
func (w *serviceWatches) restart() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx == nil || w.ctx.Err() != nil {
		return
	}
	names := make([]string, 0, len(w.running))
	for name, sw := range w.running {
		sw.cancel()
		names = append(names, name)
	}
	w.startLocked(names)
}

// startLocked has the consumer read names and starts their watches, each
// to block from that read.
func (w *serviceWatches) startLocked(names []string) {
	if len(names) == 0 {
		return
	}
	after := w.mark(names)
	for _, name := range names {
		ctx, cancel := context.WithCancel(w.ctx)
		sw := &serviceWatch{cancel: cancel, after: after, read: make(chan struct{}, 1)}
		w.running[name] = sw
		w.wg.Go(func() { w.start(ctx, name, sw) })
	}
}

// stopAll stops every watch (the detector ended, or fell back).
func (w *serviceWatches) stopAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, sw := range w.running {
		sw.cancel()
		delete(w.running, name)
	}
	w.ctx = nil
}

// noteRead tells a service's watch that the consumer read it at index,
// for the mark taken as number taken.
func (w *serviceWatches) noteRead(name string, index, taken uint64) {
	w.mu.Lock()
	sw := w.running[name]
	w.mu.Unlock()
	if sw == nil {
		return
	}
	sw.mu.Lock()
	if taken > sw.taken {
		sw.taken, sw.index = taken, index
	}
	sw.refused = false
	sw.mu.Unlock()
	select {
	case sw.read <- struct{}{}:
	default:
	}
}

// noteRefused tells a service's watch that Consul refused the consumer's
// read; the watch waits on for one that succeeds.
func (w *serviceWatches) noteRefused(name string) {
	w.mu.Lock()
	sw := w.running[name]
	w.mu.Unlock()
	if sw != nil {
		sw.mu.Lock()
		sw.refused = true
		sw.mu.Unlock()
	}
}

// readAfter waits for a read of the consumer's for a mark taken after the
// first after marks (dirtySet.markWith), and returns its index; false
// once ctx ended.
func (sw *serviceWatch) readAfter(ctx context.Context, after uint64) (index uint64, ok bool) {
	for {
		sw.mu.Lock()
		index, taken := sw.index, sw.taken
		sw.mu.Unlock()
		if taken > after {
			return index, true
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-sw.read:
		}
	}
}

// caughtUp says whether the consumer has read every watched service (or
// Consul refused it).
func (w *serviceWatches) caughtUp() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sw := range w.running {
		sw.mu.Lock()
		read := sw.taken > 0 || sw.refused
		sw.mu.Unlock()
		if !read {
			return false
		}
	}
	return true
}

// count is the number of running watches.
func (w *serviceWatches) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}

// watchService runs one service's watch until ctx ends (the service left
// the listing, or the detector stopped). It never reads without blocking:
// the consumer does every such read (the first, after a failure, the
// leader's), MaxConcurrentRequests at a time through the gate, and the
// watch blocks from the index of the consumer's latest read. 10,000
// watches starting or failing together are then 10,000 queued reads,
// never 10,000 requests at once.
func (c *Controller) watchService(ctx context.Context, name string, sw *serviceWatch) {
	c.keep(ctx, "watch of service "+name, func() {
		index, ok := sw.readAfter(ctx, sw.after)
		var last time.Time
		for ok {
			if !sleep(ctx, minWatchGap-time.Since(last)) {
				return
			}
			last = time.Now()
			entries, meta, err := c.readWhileWorking(ctx, name, index)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil || meta.LastIndex < index || (meta.LastIndex == index && cutShort(last, c.serviceWait())):
				// Failed, older than what was read (a lagging server, or
				// Consul's index went backwards), or possibly a restore:
				// the consumer reads it again, from the leader if need be
				// (service.go), and the watch goes on from there.
				if err != nil {
					log.Debugf("consul watch of service %s: %v; re-reading it", name, err)
				}
				index, ok = sw.readAfter(ctx, c.dirty.markWith(mark{fresh: true}, name))
			case meta.LastIndex == index:
				// The wait ran out: nothing changed.
			default:
				c.dirty.deliver(name, &serviceRead{entries: entries, meta: meta})
				index = meta.LastIndex
			}
		}
	})
}

// readWhileWorking is one blocking read of a service, cut short when Consul
// starts failing (retry.go): the consumer then reads it through the gate.
func (c *Controller) readWhileWorking(ctx context.Context, name string, index uint64) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.consul.gate.whileWorking(), cancel)()
	return c.consul.readServiceWith(rctx, name, request{index: index, wait: c.serviceWait()})
}

// http2ServiceWait is a service watch's wait over HTTP/2. Idle, a watch
// costs one small answer per wait: 33 a second for 10,000 services. A
// server that stops answering is found by HTTP/2's pings (client.go), with
// every watch it holds.
const http2ServiceWait = 5 * time.Minute

// serviceWait is a service watch's wait. Over HTTP/1.1 nothing but the
// wait finds a server that stopped answering (SIGSTOP, a wedged proxy: TCP
// keepalives still pass), and the watches fit the connection budget only
// for a small catalog, so each costs what a catalog-wide watch does.
func (c *Controller) serviceWait() time.Duration {
	switch {
	case c.args.ServiceWaitTime > 0:
		return c.args.ServiceWaitTime
	case c.consul.transport.http2.Load():
		return http2ServiceWait
	}
	return c.args.WaitTime
}

// The restore sentinel: a listing filtered by a node-meta pair no node has
// costs Consul O(1) and never wakes for a write (ServicesByNodeMeta watches
// only the nodes it matched), and a blocking query on an index Consul never
// reaches never answers for a change either. It answers at the end of its
// wait, or at once when Consul abandons its state store: a snapshot restore.
const (
	sentinelMeta  = "pilot-consul-restore-sentinel"
	sentinelIndex = 1 << 62
)

// runSentinel holds the sentinel while the per-service watches run. A
// restore takes every index back; a query sent on an index from after it
// then waits its whole wait, and a service's watch through an agent is
// served by the agent's streaming view, which a restore does not wake at
// all (both seen against Consul 1.16.1, TestSnapshotRestoreOnARealServer).
// The catalog-wide watches sit in blocking queries nearly all the time and
// see the restore themselves (cutShort); the listing, spaced by its cost
// and re-sent after every registration, cannot be relied on for that.
func (c *Controller) runSentinel(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-c.decided:
	}
	if !c.perService() {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		select {
		case <-c.fellBack:
			cancel()
		case <-ctx.Done():
		}
	})
	c.keep(ctx, "restore sentinel", func() { c.sentinel(ctx) })
}

// sentinel sends the sentinel query until ctx ends. An answer before half
// its wait is a restore (or a server whose max_query_time is shorter): a
// listing read from the leader tells, and a listing older than the last
// one starts every watch over (indexReset).
func (c *Controller) sentinel(ctx context.Context) {
	var bo backoff
	for ctx.Err() == nil {
		sent := time.Now()
		_, err := c.consul.get(ctx, request{index: sentinelIndex}, func(q *api.QueryOptions) (*api.QueryMeta, error) {
			q.NodeMeta = map[string]string{sentinelMeta: "none"}
			_, m, err := c.consul.Catalog().Services(q)
			return m, err
		})
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			d := bo.fail()
			c.status.readFailed("sentinel", fmt.Errorf("restore sentinel: %w", err), d)
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		bo.reset()
		if !cutShort(sent, c.consul.wait) {
			continue // its wait ran out
		}
		index, apply, err := c.readCatalog(ctx, request{leader: true})
		if err == nil && index < c.catalog.lastIndex() {
			log.Warnf("consul registry %s: Consul's index went backwards (listing %d -> %d, from the leader): a snapshot restore; re-reading every service",
				c.opts.ClusterID, c.catalog.lastIndex(), index)
			c.indexReset()
			apply()
		}
		// A proxy that answers every query at once gets ten a second.
		if !sleep(ctx, minWatchGap) {
			return
		}
	}
}
