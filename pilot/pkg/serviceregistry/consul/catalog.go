package consul

// catalog.go owns the catalog listing detector: one blocking query for the
// service list (names and tags). It marks services that are new, whose tags
// changed, or that left; it tells the pinpoint detector when the catalog
// index moved, since an instance may have come or gone in a service whose
// name and tags stayed the same.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/hashicorp/consul/api"
)

type catalogWatch struct {
	mu      sync.RWMutex
	listing map[string][]string // name -> sorted, de-duplicated tags; nil until the first read
	index   uint64
}

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
	var listing map[string][]string
	meta, err := c.consul.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		var m *api.QueryMeta
		var err error
		listing, m, err = c.consul.Catalog().Services(q)
		return m, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	if c.aclHidden(meta, len(listing), true) {
		return 0, nil, fmt.Errorf("list services: %w: the token (or anonymous, if none is set) needs read on service_prefix and node_prefix",
			errACLFiltered)
	}
	return meta.LastIndex, func() {
		d := c.catalog.apply(listing, meta.LastIndex)
		if d.first {
			c.sync.expect(d.names)
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
