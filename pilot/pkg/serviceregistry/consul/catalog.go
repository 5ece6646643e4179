package consul

// catalog.go owns the catalog listing: one blocking query for the service
// list (names and tags), the only answer of Consul's that names new
// services. It chooses the detector (servicewatch.go). With a watch per
// service, it starts one for each new name and stops that of a service
// that left; the listing, which Consul answers by walking every instance,
// is then spaced by what it costs. Catalog-wide, it marks services that
// are new, whose tags changed, or that left, and tells the pinpoint
// detector when the catalog index moved, since an instance may have come
// or gone in a service whose name and tags stayed the same.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

type catalogWatch struct {
	mu      sync.RWMutex
	listing map[string][]string // name -> sorted, de-duplicated tags; nil until the first read
	index   uint64
	// cost estimates how long Consul takes to answer a listing (an answer
	// that did not wait); the next blocking listing waits listingSpacing
	// times that, with per-service watches.
	cost time.Duration
}

// listingSpacing and listingMaxGap space the listings, with per-service
// watches, by their cost: at 100,000 instances each answer costs a Consul
// server about 170 ms of CPU, for every registration. A quarter of the
// time at most goes to listings; a new service is listed within a second
// more (docs/performance.md).
const (
	listingSpacing = 3
	listingMaxGap  = time.Second
)

// catalogDiff is what one listing changed.
type catalogDiff struct {
	changed []string // new, re-tagged or gone services
	first   bool     // the first listing: every service is new
	moved   bool     // the catalog index moved (a later listing)
	names   []string // every listed service, on the first listing
	// namesChanged: a service was added or removed (not just re-tagged).
	namesChanged bool
}

// readCatalog is one blocking read of the service list.
func (c *Controller) readCatalog(ctx context.Context, req request) (uint64, func(), error) {
	if req.index > 0 && c.perService() && !sleep(ctx, c.catalog.gap()) {
		return 0, nil, ctx.Err()
	}
	var listing map[string][]string
	start := time.Now()
	meta, err := c.consul.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		var m *api.QueryMeta
		var err error
		listing, m, err = c.consul.Catalog().Services(q)
		return m, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	c.catalog.took(time.Since(start))
	if c.aclHidden(meta, len(listing), true) {
		return 0, nil, fmt.Errorf("list services: %w: the token (or anonymous, if none is set) needs read on service_prefix and node_prefix",
			errACLFiltered)
	}
	return meta.LastIndex, func() {
		d := c.catalog.apply(listing, meta.LastIndex)
		if d.first {
			c.sync.expect(d.names)
		}
		if c.chooseDetector(len(listing)) {
			c.fallBack(d)
			return
		}
		if c.perService() {
			c.followListing(d)
			return
		}
		if d.namesChanged {
			// Every listed name holds its VIP, so a service's VIP depends on
			// the listing alone, never on the order reads complete in.
			c.dirty.mark(0, c.store.assignVIPs(c.hostnames(c.catalog.names()))...)
		}
		c.dirty.mark(0, d.changed...)
		if d.moved {
			// Names and tags that changed are marked, but one read may
			// cover several writes: the pinpoint read finds where else.
			c.pinpoint.catalogMoved(meta.LastIndex)
		}
	}, nil
}

// followListing has each listed service watched: the consumer reads a
// new one first, and drops one that left. A service whose VIP moved
// (names came or went) is read and pushed again.
func (c *Controller) followListing(d catalogDiff) {
	names := c.catalog.names()
	if d.namesChanged {
		// Before the new watches' first reads: those carry the VIPs.
		mark := c.store.assignVIPs(c.hostnames(names))
		for _, n := range d.changed {
			if !c.catalog.listed(n) {
				mark = append(mark, n) // its watch stops
			}
		}
		c.dirty.mark(0, mark...)
	}
	c.services.follow(names)
	c.metrics.serviceWatches.Record(float64(c.services.count()))
}

// fallBack starts the catalog-wide detectors in place of the per-service
// watches, and reads every service once: what changed between the last
// watch answers and the new detectors' first reads is found.
func (c *Controller) fallBack(d catalogDiff) {
	c.services.stopAll()
	c.metrics.serviceWatches.Record(0)
	close(c.fellBack)
	names := c.catalog.names()
	if d.first {
		names = d.names
	}
	c.dirty.mark(0, c.store.assignVIPs(c.hostnames(names))...)
	c.dirty.mark(0, names...)
	c.pinpoint.catalogMoved(c.catalog.lastIndex())
}

// took records how long a listing took; one that waited for a change
// (far above the estimate) says nothing of its cost.
func (w *catalogWatch) took(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.cost == 0:
		w.cost = d
	case d < 3*w.cost:
		w.cost = (3*w.cost + d) / 4
	}
}

// gap is the pause before the next blocking listing.
func (w *catalogWatch) gap() time.Duration {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return min(listingSpacing*w.cost, listingMaxGap)
}

// apply stores a listing and says what changed.
func (w *catalogWatch) apply(listing map[string][]string, index uint64) catalogDiff {
	w.mu.Lock()
	defer w.mu.Unlock()
	var d catalogDiff
	if w.listing == nil {
		d.first = true
		w.listing = make(map[string][]string, len(listing))
		for name := range listing {
			d.names = append(d.names, name)
		}
		d.namesChanged = true
	} else {
		// An unmoved index is a blocking-query timeout or a retry: nothing happened.
		d.moved = index > w.index
	}
	for name := range w.listing {
		if _, ok := listing[name]; !ok {
			delete(w.listing, name)
			d.changed = append(d.changed, name)
			d.namesChanged = true
		}
	}
	for name, tags := range listing {
		// Consul merges the tags of every instance in instance order, which
		// changes as instances come and go: compare them as sets, or every
		// (de)registration re-reads every multi-tag service.
		tags = slices.Compact(slices.Sorted(slices.Values(tags)))
		old, ok := w.listing[name]
		if ok && slices.Equal(old, tags) {
			continue
		}
		d.namesChanged = d.namesChanged || !ok
		w.listing[name] = tags
		d.changed = append(d.changed, name)
	}
	w.index = index
	return d
}

// listed reports whether the last listing holds name.
func (w *catalogWatch) listed(name string) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	_, ok := w.listing[name]
	return ok
}

// names returns every listed service.
func (w *catalogWatch) names() []string {
	w.mu.RLock()
	defer w.mu.RUnlock()
	out := make([]string, 0, len(w.listing))
	for name := range w.listing {
		out = append(out, name)
	}
	return out
}

// lastIndex is the Consul index of the last listing.
func (w *catalogWatch) lastIndex() uint64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.index
}

// errACLFiltered: Consul answered, but ACLs hid everything.
var errACLFiltered = errors.New("consul ACLs filtered out every result")

// aclHidden says whether an empty answer means ACLs hid everything, which
// must never be applied: with default_policy=deny, a missing or weak token
// gets 200 and nothing, and applying that would wipe Consul's services from
// the mesh. Consul flags filtering (X-Consul-Results-Filtered-By-ACLs) for
// a real token, and an empty answer without the flag is truly empty (an
// Enterprise namespace or partition can hold no service at all). For the
// anonymous token Consul never flags it (agent/consul/rpc.go
// maskResultsFilteredByACLs), so there an empty answer under
// default_policy=deny counts as hidden where it cannot be empty: a listing
// outside an Enterprise namespace or partition always holds "consul", and
// a listed service has instances.
func (c *Controller) aclHidden(meta *api.QueryMeta, n int, listing bool) bool {
	if meta == nil || n > 0 {
		return false
	}
	if meta.ResultsFilteredByACLs {
		return true
	}
	if c.consul.transport.token.configured() || meta.DefaultACLPolicy != "deny" {
		return false
	}
	return !listing || (c.args.EnterpriseNamespace == "" && c.args.Partition == "")
}
