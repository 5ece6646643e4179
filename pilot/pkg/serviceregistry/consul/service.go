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
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"k8s.io/client-go/util/workqueue"

	"istio.io/istio/pilot/pkg/model"
)

// dirtySet holds the services to (re)read: it de-duplicates, hands a service
// to one worker at a time, and retries failed reads (retry.go).
type dirtySet struct {
	queue workqueue.TypedRateLimitingInterface[string]
	mu    sync.Mutex
	marks map[string]mark
	// inWork counts services a worker holds; delayed are those waiting
	// out their own retry delay (refused). Both serve busy: the queue's
	// Len leaves out what is in work, and a worker takes a service from
	// the queue before it takes its mark.
	inWork  int
	delayed map[string]bool
	takes   uint64 // marks taken so far
}

// mark is why a service waits: since when, and the index its read must
// reach (an answer below it comes from a server that has not seen the
// change that marked it).
type mark struct {
	since time.Time // when a change was first seen, for the latency metric
	need  uint64
	// left are checks seen leaving a status (check -> that status): an
	// answer that still shows one in it is as old as need says too, but
	// the write that moved it is not known (it vanished from a list).
	left map[checkKey]string
	// answer is the service as its own watch last read it (at need), so
	// the worker need not read it again; nil when something else marked it.
	answer *serviceRead
	// fresh asks for a read from Consul: the watch's answers so far are
	// not to be trusted (it failed, or Consul's index went backwards).
	fresh bool
	// taken numbers the take that handed the mark to a worker: a read
	// is newer than a mark when its number is above what the mark returned.
	taken uint64
}

// serviceRead is one answer of /v1/health/service/<name>.
type serviceRead struct {
	entries []*api.ServiceEntry
	meta    *api.QueryMeta
}

func newDirtySet(name string) *dirtySet {
	return &dirtySet{
		queue: workqueue.NewTypedRateLimitingQueueWithConfig[string](newServiceRetries(),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: name}),
		marks:   map[string]mark{},
		delayed: map[string]bool{},
	}
}

// mark says services may have changed or left; their reads must reach need.
func (d *dirtySet) mark(need uint64, names ...string) {
	d.markWith(mark{need: need}, names...)
}

// markWith is mark with what the read must show (m.left); m.since is now.
// It returns the number of marks taken before: the read of these services
// that follows has a higher one (mark.taken).
func (d *dirtySet) markWith(m mark, names ...string) (takes uint64) {
	m.since = time.Now()
	takes = d.merge(m, names...)
	for _, n := range names {
		d.queue.Add(n)
	}
	return takes
}

func (d *dirtySet) merge(m mark, names ...string) (takes uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	takes = d.takes
	for _, n := range names {
		old, ok := d.marks[n]
		merged := mark{since: m.since, need: max(old.need, m.need), left: old.left, answer: old.answer, fresh: old.fresh || m.fresh}
		switch {
		case m.fresh:
			merged.answer = nil
		case m.answer != nil && (merged.answer == nil || m.answer.meta.LastIndex >= merged.answer.meta.LastIndex):
			merged.answer = m.answer
		}
		if ok && old.since.Before(m.since) {
			merged.since = old.since
		}
		for k, status := range m.left {
			if merged.left == nil {
				merged.left = map[checkKey]string{}
			}
			merged.left[k] = status
		}
		d.marks[n] = merged
	}
	return takes
}

// deliver hands over a service's own watch answer: the service's read is
// that answer.
func (d *dirtySet) deliver(name string, a *serviceRead) {
	d.markWith(mark{need: a.meta.LastIndex, answer: a}, name)
}

// take blocks for the next service; quit once shut down.
func (d *dirtySet) take() (name string, m mark, quit bool) {
	name, quit = d.queue.Get()
	if quit {
		return "", mark{}, true
	}
	d.mu.Lock()
	m = d.marks[name]
	delete(d.marks, name)
	delete(d.delayed, name)
	d.inWork++
	d.takes++
	m.taken = d.takes
	d.mu.Unlock()
	return name, m, false
}

// done releases a service. After a failure it is read again: at once when
// Consul failed (the gate paces every reader), after the service's own
// retry delay when Consul refused that service alone.
func (d *dirtySet) done(name string, m mark, err error) {
	switch {
	case err == nil:
		d.queue.Forget(name)
	case isRefused(err):
		d.merge(m, name)
		d.mu.Lock()
		d.delayed[name] = true
		d.mu.Unlock()
		d.queue.AddRateLimited(name)
	default:
		d.merge(m, name)
		d.queue.Add(name)
	}
	d.mu.Lock()
	d.inWork--
	d.mu.Unlock()
	d.queue.Done(name)
}

// len is the number of services waiting (not those in work).
func (d *dirtySet) len() int { return d.queue.Len() }

// busy says whether a read is queued or in work. A refused service waiting
// out its own retry delay (up to 5 minutes) does not count.
func (d *dirtySet) busy() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inWork > 0 || d.queue.Len() > 0 {
		return true
	}
	// Marked, and not yet taken by a worker (or about to be added).
	for name := range d.marks {
		if !d.delayed[name] {
			return true
		}
	}
	return false
}

func (d *dirtySet) shutDown() { d.queue.ShutDown() }

// refusedError: Consul answered, but refused this service alone, or
// this read was slow while Consul answered others.
type refusedError struct {
	err  error
	slow bool // no answer in time; one is expected once retried
}

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

func isRefused(err error) bool {
	var r *refusedError
	return errors.As(err, &r)
}

// work processes marked services until the set shuts down.
func (c *Controller) work(ctx context.Context) {
	for {
		name, m, quit := c.dirty.take()
		if quit {
			return
		}
		err := c.syncServiceSafely(ctx, name, m)
		switch {
		case err == nil || ctx.Err() != nil || errors.Is(err, errCutOnRecovery):
		case isRefused(err):
			c.status.serviceRefused(name, err)
		default:
			c.status.readFailed("service", err, 0) // when the gate lets it
		}
		c.dirty.done(name, m, err)
	}
}

// syncServiceSafely is syncService, with a panic turned into a failed read
// of that service (see recovered): it is retried, the others go on, and
// like a refused service it does not hold the first sync. The panic may
// have cut its push short, so the next read pushes it whole.
func (c *Controller) syncServiceSafely(ctx context.Context, name string, m mark) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &refusedError{err: c.recovered("service "+name, v)}
			c.store.unpushed(name)
			c.sync.read(name)
		}
	}()
	return c.syncService(ctx, name, m)
}

// syncService brings one service in line with Consul and pushes what changed.
func (c *Controller) syncService(ctx context.Context, name string, m mark) error {
	if !c.catalog.listed(name) {
		c.removeService(name)
		return nil
	}
	// Never store an answer older than what is served, or older than the
	// change that marked the service: behind a load balancer, a lagging
	// server answers too, and its answer would stand until the next change.
	served, _ := c.store.readIndex(name)
	need := max(m.need, served)
	var entries []*api.ServiceEntry
	var meta *api.QueryMeta
	var err error
	if a := m.answer; a != nil && a.meta.LastIndex >= need {
		entries, meta = a.entries, a.meta // the service's watch read it
	} else {
		entries, meta, err = c.consul.readService(ctx, name, false)
	}
	if err == nil && !c.aclHidden(meta, len(entries), false) && c.behind(entries, meta.LastIndex, need, m.left) {
		c.metrics.lagging.Increment()
		log.Debugf("consul service %s: answer at index %d is behind %d (catalog %d); asking the leader",
			name, meta.LastIndex, need, c.catalog.lastIndex())
		entries, meta, err = c.consul.readService(ctx, name, true)
	}
	if refused := (*refusedError)(nil); errors.As(err, &refused) {
		// What is served for it stays, and /debug/consulz says why. A
		// service Consul refuses (400, 404...) does not hold readiness,
		// like one ACLs hide; a slow one is expected to answer.
		c.store.failed(name, err)
		c.services.noteRefused(name)
		if !refused.slow {
			c.sync.read(name)
		}
	}
	if err != nil {
		return err
	}
	c.status.readSucceeded()
	if c.aclHidden(meta, len(entries), false) {
		err := &refusedError{err: fmt.Errorf("read service %q: %w: the token needs read on its nodes (node_prefix)", name, errACLFiltered)}
		c.store.failed(name, err)
		c.services.noteRefused(name)
		c.sync.read(name) // read as far as it can be: it does not hold readiness
		return err
	}
	if !c.catalog.listed(name) {
		// Deregistered while we read it: the answer may predate that.
		c.removeService(name)
		return nil
	}
	index := meta.LastIndex
	c.pinpoint.explain(index) // a service's index is that of its last change
	c.health.noteRead(name, entries, index)
	conv := c.conv.convert(name, entries)
	for _, w := range conv.warnings(name) {
		log.Warn(w)
	}
	if conv.notServed != "" && !conv.badInput {
		log.Debugf("consul service %q is not served: %s", name, conv.notServed)
	}
	ch := c.store.update(name, conv, readRecord{index: index, at: time.Now(), skipped: conv.skipped,
		notServed: conv.notServed, conflicts: conv.conflicts})
	log.Debugf("consul service %s read at index %d: %d endpoints (service changed: %v, endpoints changed: %v)",
		name, index, len(conv.endpoints), ch.serviceChanged, ch.endpointsChanged)
	c.services.noteRead(name, index, m.taken)
	if c.push(ch) {
		c.publish(name, ch.next)
		if !m.since.IsZero() {
			c.metrics.pushLatency.Record(time.Since(m.since).Seconds())
		}
	}
	// After the push: ready means everything read has reached istiod.
	c.sync.read(name)
	return nil
}

// behind says whether an answer is older than what the registry knows:
// below the index a change marked it with (or what is served), showing a
// check in a status it was seen to leave, or empty below the listing that
// lists it (a listed service has instances at the listing's index; one
// that left since answers at a later index).
func (c *Controller) behind(entries []*api.ServiceEntry, index, need uint64, left map[checkKey]string) bool {
	if index < need || (len(entries) == 0 && index < c.catalog.lastIndex()) {
		return true
	}
	for _, e := range entries {
		for _, hc := range e.Checks {
			if status, ok := left[checkKey{hc.Node, hc.CheckID}]; ok && hc.Status == status {
				return true
			}
		}
	}
	return false
}

// removeService drops a service that left the catalog.
func (c *Controller) removeService(name string) {
	c.health.forget(name)
	if c.push(change{prev: c.store.remove(name), serviceChanged: true}) {
		c.publish(name, nil)
	}
	c.sync.read(name)
}

// push tells istiod what one change did; false when there was nothing to say.
// An endpoint-only change is an EDS update for that service alone; a change
// to the service itself (new, ports, VIP, identities) is a push scoped to it.
// A service served under two hostnames (--consulDatacenterFailover) is
// pushed under each.
func (c *Controller) push(ch change) bool {
	shard := model.ShardKeyFromRegistry(c)
	switch {
	case ch.next == nil && ch.prev == nil:
		return false
	case ch.next == nil:
		log.Infof("consul service %s is gone; removing %s", ch.prev.name, ch.prev.service.Hostname)
		for _, svc := range ch.prev.hosted() {
			c.opts.XDSUpdater.SvcUpdate(shard, string(svc.Hostname), svc.Attributes.Namespace, model.EventDelete)
			// Istio's convention (kube controller, bootstrap handler): on
			// delete, curr is the deleted service and prev is nil.
			c.handlers.NotifyServiceHandlers(nil, svc, model.EventDelete)
		}
	case ch.serviceChanged:
		s := ch.next
		var before []*model.Service
		if ch.prev != nil {
			before = ch.prev.hosted()
		}
		for i, svc := range s.hosted() {
			event := model.EventAdd
			var prevSvc *model.Service
			if i < len(before) {
				event, prevSvc = model.EventUpdate, before[i]
			}
			c.opts.XDSUpdater.EDSCacheUpdate(shard, string(svc.Hostname), svc.Attributes.Namespace, s.endpoints)
			c.opts.XDSUpdater.SvcUpdate(shard, string(svc.Hostname), svc.Attributes.Namespace, event)
			// istiod's service handler turns this into one full push scoped
			// to this service (ConfigsUpdated = {ServiceEntry hostname}), as
			// for Kubernetes services.
			c.handlers.NotifyServiceHandlers(prevSvc, svc, event)
		}
	case ch.endpointsChanged:
		s := ch.next
		for _, svc := range s.hosted() {
			c.opts.XDSUpdater.EDSUpdate(shard, string(svc.Hostname), svc.Attributes.Namespace, s.endpoints)
		}
	default:
		return false
	}
	return true
}
