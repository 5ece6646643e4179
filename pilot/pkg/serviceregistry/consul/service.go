package consul

// service.go is the consumer: the detectors (catalog.go, health.go,
// pinpoint.go) mark services that may have changed or left; workers take
// them one at a time per service, read them, convert them, apply the result
// to the store and make every push to istiod, removals included. A service
// is never handed to two workers at once, and one marked while in work is
// handed out again after, so a push computed from an older read can never
// overtake a newer state or a removal.

import (
	"context"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"

	"istio.io/istio/pilot/pkg/model"
)

// dirtySet holds the services to (re)read: it de-duplicates, hands a service
// to one worker at a time, and retries failed reads (retry.go).
type dirtySet struct {
	queue workqueue.TypedRateLimitingInterface[string]
	mu    sync.Mutex
	since map[string]time.Time // when a change to a service was first seen, for the latency metric
}

func newDirtySet(name string) *dirtySet {
	return &dirtySet{
		queue: workqueue.NewTypedRateLimitingQueueWithConfig[string](newRetryLimiter(),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
		since: map[string]time.Time{},
	}
}

// mark says services may have changed or left.
func (d *dirtySet) mark(names ...string) {
	now := time.Now()
	d.mu.Lock()
	for _, n := range names {
		if _, ok := d.since[n]; !ok {
			d.since[n] = now
		}
	}
	d.mu.Unlock()
	for _, n := range names {
		d.queue.Add(n)
	}
}

// take blocks for the next service; quit once shut down.
func (d *dirtySet) take() (name string, since time.Time, quit bool) {
	name, quit = d.queue.Get()
	if quit {
		return "", time.Time{}, true
	}
	d.mu.Lock()
	since = d.since[name]
	delete(d.since, name)
	d.mu.Unlock()
	return name, since, false
}

// done releases a service; failed retries it after the retry delay.
func (d *dirtySet) done(name string, since time.Time, failed bool) {
	if failed {
		d.mu.Lock()
		if _, ok := d.since[name]; !ok {
			d.since[name] = since
		}
		d.mu.Unlock()
		d.queue.AddRateLimited(name)
	} else {
		d.queue.Forget(name)
	}
	d.queue.Done(name)
}

func (d *dirtySet) failures(name string) int { return d.queue.NumRequeues(name) }

// len is the number of services waiting (not those in work).
func (d *dirtySet) len() int { return d.queue.Len() }

func (d *dirtySet) shutDown() { d.queue.ShutDown() }

// work processes marked services until the set shuts down.
func (c *Controller) work(ctx context.Context) {
	for {
		name, since, quit := c.dirty.take()
		if quit {
			return
		}
		err := c.syncService(ctx, name, since)
		if err != nil && ctx.Err() == nil {
			n := c.dirty.failures(name)
			c.status.readFailed("service", err, retryDelay(n), n == 0)
		}
		c.dirty.done(name, since, err != nil && ctx.Err() == nil)
	}
}

// syncService brings one service in line with Consul and pushes what changed.
func (c *Controller) syncService(ctx context.Context, name string, since time.Time) error {
	if !c.catalog.listed(name) {
		c.removeService(name)
		return nil
	}
	entries, index, err := c.consul.readService(ctx, name)
	if err != nil {
		return err
	}
	c.status.readSucceeded()
	if !c.catalog.listed(name) {
		// Deregistered while we read it: the answer may predate that.
		c.removeService(name)
		return nil
	}
	c.pinpoint.explain(index) // a service's index is that of its last change
	c.health.noteRead(name, entries)
	conv := c.conv.convert(name, entries)
	for _, w := range conv.warnings(name) {
		log.Warn(w)
	}
	if conv.notServed != "" && !conv.badInput {
		log.Debugf("consul service %q is not served: %s", name, conv.notServed)
	}
	ch := c.store.update(name, conv, readRecord{index: index, at: time.Now(), skipped: conv.skipped,
		notServed: conv.notServed, conflicts: conv.conflicts})
	c.sync.read(name)
	log.Debugf("consul service %s read at index %d: %d endpoints (service changed: %v, endpoints changed: %v)",
		name, index, len(conv.endpoints), ch.serviceChanged, ch.endpointsChanged)
	if c.push(ch) {
		c.publish(name, ch.next)
		if !since.IsZero() {
			consulPushLatency.Record(time.Since(since).Seconds())
		}
	}
	return nil
}

// removeService drops a service that left the catalog.
func (c *Controller) removeService(name string) {
	c.health.forget(name)
	c.sync.read(name)
	if c.push(change{prev: c.store.remove(name), serviceChanged: true}) {
		c.publish(name, nil)
	}
}

// push tells istiod what one change did; false when there was nothing to say.
// An endpoint-only change is an EDS update for that service alone; a change
// to the service itself (new, ports, VIP, identities) is a push scoped to it.
func (c *Controller) push(ch change) bool {
	shard := model.ShardKeyFromRegistry(c)
	switch {
	case ch.next == nil && ch.prev == nil:
		return false
	case ch.next == nil:
		s := ch.prev
		log.Infof("consul service %s is gone; removing %s", s.name, s.service.Hostname)
		c.opts.XDSUpdater.SvcUpdate(shard, string(s.service.Hostname), s.service.Attributes.Namespace, model.EventDelete)
		// Istio's convention (kube controller, bootstrap handler): on delete,
		// curr is the deleted service and prev is nil.
		c.handlers.NotifyServiceHandlers(nil, s.service, model.EventDelete)
	case ch.serviceChanged:
		s := ch.next
		event := model.EventAdd
		var prevSvc *model.Service
		if ch.prev != nil {
			event, prevSvc = model.EventUpdate, ch.prev.service
		}
		c.opts.XDSUpdater.EDSCacheUpdate(shard, string(s.service.Hostname), s.service.Attributes.Namespace, s.endpoints)
		c.opts.XDSUpdater.SvcUpdate(shard, string(s.service.Hostname), s.service.Attributes.Namespace, event)
		// istiod's service handler turns this into one full push scoped to
		// this service (ConfigsUpdated = {ServiceEntry hostname}), as for
		// Kubernetes services.
		c.handlers.NotifyServiceHandlers(prevSvc, s.service, event)
	case ch.endpointsChanged:
		s := ch.next
		c.opts.XDSUpdater.EDSUpdate(shard, string(s.service.Hostname), s.service.Attributes.Namespace, s.endpoints)
	default:
		return false
	}
	return true
}
