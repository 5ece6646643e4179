package consul

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/util/sets"
)

// readCatalog is one blocking read of the service list. New services and
// services whose tags changed are queued for a read; vanished ones are removed.
func (c *Controller) readCatalog(q *api.QueryOptions) (uint64, func(), error) {
	listing, meta, err := c.client.Catalog().Services(q)
	if err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	if err := aclFiltered(meta, len(listing), "service_prefix and node_prefix"); err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	return meta.LastIndex, func() { c.applyCatalog(listing, meta) }, nil
}

// applyCatalog stores a service list read.
func (c *Controller) applyCatalog(listing map[string][]string, meta *api.QueryMeta) {
	now := time.Now()
	c.mu.Lock()
	first := c.initial == nil && !c.synced.Load()
	var removed []*serviceState
	for name := range c.catalog {
		if _, ok := listing[name]; !ok {
			delete(c.catalog, name)
			delete(c.fetched, name)
			if s := c.removeLocked(name); s != nil {
				removed = append(removed, s)
			}
		}
	}
	for name, tags := range listing {
		// Consul merges the tags of every instance in instance order, which
		// changes as instances come and go: compare them as sets, or every
		// (de)registration re-reads every multi-tag service.
		tags = slices.Compact(slices.Sorted(slices.Values(tags)))
		old, ok := c.catalog[name]
		if ok && slices.Equal(old, tags) {
			continue
		}
		c.catalog[name] = tags
		c.markDirtyLocked(name, now)
	}
	if first {
		c.initial = make(map[string]struct{}, len(listing))
		for name := range listing {
			c.initial[name] = struct{}{}
		}
		c.checkInitialLocked()
	} else if meta.LastIndex > c.catalogIndex {
		// The catalog index moved. Names and tags that changed are queued
		// above, but one read may cover several writes: an instance may also
		// have been (de)registered elsewhere, in a service whose tags stayed
		// the same. The pinpoint read finds where (bumps.go). (An unmoved
		// index is a blocking-query timeout or a retry: nothing happened.)
		c.bumps.add(meta.LastIndex)
		c.pinpointSoon()
	}
	c.catalogIndex = meta.LastIndex
	c.mu.Unlock()
	for _, s := range removed {
		c.pushRemoved(s)
	}
}

// errACLFiltered: Consul answered, but ACLs hid everything.
var errACLFiltered = errors.New("consul ACLs filtered out every result")

// aclFiltered turns an answer that ACLs emptied into an error: with
// default_policy=deny, a missing or weak token gets 200 and nothing, and
// applying that would wipe every Consul service from the mesh.
// Consul flags filtering for real tokens; for the anonymous token it only
// says default_policy=deny. An empty answer under either is taken as missing
// permissions (a Consul catalog always lists at least the "consul" service).
func aclFiltered(meta *api.QueryMeta, n int, needs string) error {
	if meta == nil || n > 0 {
		return nil
	}
	if meta.ResultsFilteredByACLs || meta.DefaultACLPolicy == "deny" {
		return fmt.Errorf("%w: the token (or anonymous, if none is set) needs read on %s", errACLFiltered, needs)
	}
	return nil
}

// indexReset handles a Consul whose indexes went backwards (snapshot
// restore, a fresh agent): the per-service indexes of earlier reads mean
// nothing any more, so they are dropped and every service is re-read.
func (c *Controller) indexReset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	clear(c.fetched)
	for name := range c.catalog {
		c.markDirtyLocked(name, now)
	}
}

func (c *Controller) markDirtyLocked(name string, now time.Time) {
	if _, ok := c.dirtyAt[name]; !ok {
		c.dirtyAt[name] = now
	}
	c.queue.Add(name)
}

// processNext reads one queued service and applies it; false once shut down.
func (c *Controller) processNext(ctx context.Context) bool {
	name, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(name)
	c.mu.RLock()
	_, listed := c.catalog[name]
	c.mu.RUnlock()
	if !listed {
		c.queue.Forget(name) // deregistered meanwhile: nothing to read or retry
		return true
	}
	c.readSlots <- struct{}{}
	entries, meta, err := c.client.Health().Service(name, "", false, c.queryOptions(ctx))
	<-c.readSlots
	if err == nil {
		err = aclFiltered(meta, len(entries), "service \""+name+"\" and node_prefix")
	}
	if err != nil {
		if ctx.Err() == nil {
			d := c.queue.NumRequeues(name)
			c.readFailed("service "+name, err, min(backoffMin<<d, backoffMax), d == 0)
			c.queue.AddRateLimited(name)
		}
		return true
	}
	c.queue.Forget(name)
	c.readSucceeded()
	conv := c.conv.convert(name, entries)
	for _, w := range conv.warnings {
		log.Warn(w)
	}
	if conv.hidden != "" {
		log.Debug(conv.hidden)
	}
	c.apply(name, entries, conv, meta.LastIndex)
	return true
}

// apply stores one service's new state and pushes the difference: an
// endpoint-only change is an EDS update for that service alone; a change to
// the service itself (new, ports, VIP, identities) is a push scoped to it.
func (c *Controller) apply(name string, entries []*api.ServiceEntry, conv conversion, index uint64) {
	c.mu.Lock()
	if _, ok := c.catalog[name]; !ok {
		// Deregistered while we were reading it: the catalog read already removed it.
		c.mu.Unlock()
		return
	}
	c.fetched[name] = index
	c.bumps.explain(index) // a service's index is that of its last change
	c.noteChecksLocked(name, entries)
	delete(c.initial, name)
	since, tracked := c.dirtyAt[name]
	delete(c.dirtyAt, name)
	prev := c.services[name]
	if conv.service == nil {
		removed := c.removeLocked(name)
		c.checkInitialLocked()
		c.mu.Unlock()
		if removed != nil {
			c.pushRemoved(removed)
		}
		return
	}
	svc := conv.service
	svc.DefaultAddress = c.vips.allocate(svc.Hostname)
	next := &serviceState{
		name:        name,
		service:     svc,
		endpoints:   conv.endpoints,
		instances:   conv.instances,
		fingerprint: serviceFingerprint(svc),
		epKey:       endpointsKey(conv.endpoints),
	}
	next.nodes = nodesOf(conv.instances)
	serviceChanged := prev == nil || prev.fingerprint != next.fingerprint
	endpointsChanged := prev == nil || prev.epKey != next.epKey
	if !serviceChanged {
		// Keep the object istiod already holds: same service, same identity.
		next.service = prev.service
	} else if prev != nil {
		svc.CreationTime = prev.service.CreationTime
	} else {
		svc.CreationTime = time.Now()
	}
	c.storeLocked(prev, next)
	c.checkInitialLocked()
	c.mu.Unlock()

	shard := model.ShardKeyFromRegistry(c)
	hostname, ns := string(next.service.Hostname), next.service.Attributes.Namespace
	log.Debugf("consul service %s read at index %d: %d endpoints (service changed: %v, endpoints changed: %v)",
		name, index, len(next.endpoints), serviceChanged, endpointsChanged)
	switch {
	case serviceChanged:
		event := model.EventAdd
		var prevSvc *model.Service
		if prev != nil {
			event, prevSvc = model.EventUpdate, prev.service
		}
		c.opts.XDSUpdater.EDSCacheUpdate(shard, hostname, ns, next.endpoints)
		c.opts.XDSUpdater.SvcUpdate(shard, hostname, ns, event)
		// istiod's service handler turns this into one full push scoped to
		// this service (ConfigsUpdated = {ServiceEntry hostname}), as for
		// Kubernetes services.
		c.handlers.NotifyServiceHandlers(prevSvc, next.service, event)
	case endpointsChanged:
		c.opts.XDSUpdater.EDSUpdate(shard, hostname, ns, next.endpoints)
	default:
		return
	}
	if tracked {
		consulPushLatency.Record(time.Since(since).Seconds())
	}
}

// pushRemoved tells istiod a service is gone.
func (c *Controller) pushRemoved(s *serviceState) {
	shard := model.ShardKeyFromRegistry(c)
	hostname, ns := string(s.service.Hostname), s.service.Attributes.Namespace
	log.Infof("consul service %s is gone; removing %s", s.name, hostname)
	c.opts.XDSUpdater.SvcUpdate(shard, hostname, ns, model.EventDelete)
	// Istio's convention (kube controller, bootstrap handler): on delete,
	// curr is the deleted service and prev is nil.
	c.handlers.NotifyServiceHandlers(nil, s.service, model.EventDelete)
}

func (c *Controller) storeLocked(prev, next *serviceState) {
	if prev != nil {
		c.unindexLocked(prev)
		c.endpointCount -= len(prev.endpoints)
	}
	c.endpointCount += len(next.endpoints)
	c.services[next.name] = next
	c.byHost[next.service.Hostname] = next
	for _, ip := range addressesOf(next.instances) {
		c.byIP[ip] = append(c.byIP[ip], next)
	}
	for _, n := range next.nodes {
		if c.nodes[n] == nil {
			c.nodes[n] = map[string]struct{}{}
		}
		c.nodes[n][next.name] = struct{}{}
	}
	c.updateGaugesLocked()
}

func (c *Controller) removeLocked(name string) *serviceState {
	delete(c.initial, name)
	c.forgetChecksLocked(name)
	delete(c.dirtyAt, name)
	s := c.services[name]
	if s == nil {
		return nil
	}
	c.unindexLocked(s)
	c.endpointCount -= len(s.endpoints)
	delete(c.services, name)
	delete(c.byHost, s.service.Hostname)
	c.vips.release(s.service.Hostname)
	c.updateGaugesLocked()
	return s
}

func (c *Controller) unindexLocked(s *serviceState) {
	for _, ip := range addressesOf(s.instances) {
		c.byIP[ip] = slices.DeleteFunc(c.byIP[ip], func(x *serviceState) bool { return x.name == s.name })
		if len(c.byIP[ip]) == 0 {
			delete(c.byIP, ip)
		}
	}
	for _, n := range s.nodes {
		delete(c.nodes[n], s.name)
		if len(c.nodes[n]) == 0 {
			delete(c.nodes, n)
		}
	}
}

func (c *Controller) checkInitialLocked() {
	if c.initial == nil || len(c.initial) > 0 || c.synced.Load() {
		return
	}
	log.Infof("consul registry %s synced: %d services, %d endpoints in %v",
		c.opts.ClusterID, len(c.services), c.endpointCount, time.Since(c.started).Round(time.Millisecond))
	c.synced.Store(true)
}

// updateGaugesLocked is O(1): it runs on every store, and a count over every
// service made the first sync of 10,000 services quadratic (11% of istiod's
// CPU in the 10,000 × 10 start-up profile).
func (c *Controller) updateGaugesLocked() {
	consulServices.Record(float64(len(c.services)))
	consulEndpoints.Record(float64(c.endpointCount))
}

// serviceFingerprint covers every service field the registry sets, so equal
// fingerprints mean no service-level push is needed.
func serviceFingerprint(s *model.Service) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%s|%v|", s.Hostname, s.Attributes.Namespace, s.DefaultAddress, s.ServiceAccounts)
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "%s:%d:%s,", p.Name, p.Port, p.Protocol)
	}
	return b.String()
}

// endpointsKey is a canonical form of an endpoint list for change detection.
func endpointsKey(eps []*model.IstioEndpoint) string {
	keys := make([]string, 0, len(eps))
	for _, e := range eps {
		lbl := make([]string, 0, len(e.Labels))
		for k, v := range e.Labels {
			lbl = append(lbl, k+"="+v)
		}
		sort.Strings(lbl)
		keys = append(keys, fmt.Sprintf("%v|%d|%s|%d|%s|%s|%s|%d|%s|%v",
			e.Addresses, e.EndpointPort, e.ServicePortName, e.LbWeight, e.TLSMode, e.ServiceAccount,
			e.Locality.Label, e.HealthStatus, e.WorkloadName, lbl))
	}
	sort.Strings(keys)
	return strings.Join(keys, "\n")
}

func addressesOf(insts []*instance) []string {
	ips := sets.New[string]()
	for _, i := range insts {
		ips.Insert(i.address)
	}
	return sets.SortedList(ips)
}

func nodesOf(insts []*instance) []string {
	n := sets.New[string]()
	for _, i := range insts {
		n.Insert(i.node)
	}
	return sets.SortedList(n)
}
