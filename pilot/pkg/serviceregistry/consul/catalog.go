package consul

// catalog.go owns the catalog listing detector: one blocking query for the
// service list (names and tags). It marks services that are new, whose tags
// changed, or that left; it tells the pinpoint detector when the catalog
// index moved, since an instance may have come or gone in a service whose
// name and tags stayed the same.

import (
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
}

// readCatalog is one blocking read of the service list.
func (c *Controller) readCatalog(q *api.QueryOptions) (uint64, func(), error) {
	listing, meta, err := c.consul.Catalog().Services(q)
	if err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	if err := aclFiltered(meta, len(listing), "service_prefix and node_prefix"); err != nil {
		return 0, nil, fmt.Errorf("list services: %w", err)
	}
	return meta.LastIndex, func() {
		d := c.catalog.apply(listing, meta.LastIndex)
		if d.first {
			c.sync.expect(d.names)
		}
		c.dirty.mark(d.changed...)
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
	} else {
		// An unmoved index is a blocking-query timeout or a retry: nothing happened.
		d.moved = index > w.index
	}
	for name := range w.listing {
		if _, ok := listing[name]; !ok {
			delete(w.listing, name)
			d.changed = append(d.changed, name)
		}
	}
	for name, tags := range listing {
		// Consul merges the tags of every instance in instance order, which
		// changes as instances come and go: compare them as sets, or every
		// (de)registration re-reads every multi-tag service.
		tags = slices.Compact(slices.Sorted(slices.Values(tags)))
		if old, ok := w.listing[name]; ok && slices.Equal(old, tags) {
			continue
		}
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
