package consul

// health.go owns the health detector: one blocking query for the checks
// that are not passing. It marks a service when one of its checks (or one
// of its nodes' checks) differs from what that service's last read saw.

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/util/sets"
)

// nonPassingFilter asks Consul only for checks that are not passing. The
// answer's size follows the number of unhealthy checks, not the size of the
// catalog: with every check listed, each health change anywhere made Consul
// encode, and istiod decode, every check in the datacenter (docs/architecture.md,
// Watching).
const nonPassingFilter = `Status != "passing"`

type checkKey struct{ node, id string }

// checkView is what one read of a service saw: its non-passing checks,
// its nodes' included, and the read's index.
type checkView struct {
	index  uint64
	checks map[checkKey]string // -> status
}

// healthWatch keeps each service's own view. A node check is in the view
// of every service on that node: one service's read seeing a node turn
// critical says nothing about what its neighbours' reads saw, so each is
// compared on its own (a shared record let the first read hide the change
// from the others, which kept routing to the dead node).
type healthWatch struct {
	mu    sync.Mutex
	views map[string]checkView // by Consul name; services read since they were listed
}

func newHealthWatch() *healthWatch { return &healthWatch{views: map[string]checkView{}} }

// readHealth is one blocking read of every non-passing check.
func (c *Controller) readHealth(ctx context.Context, req request) (uint64, func(), error) {
	var checks api.HealthChecks
	meta, err := c.consul.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		q.Filter = nonPassingFilter
		var m *api.QueryMeta
		var err error
		checks, m, err = c.consul.Health().State(api.HealthAny, q)
		return m, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("list non-passing health checks: %w", err)
	}
	return meta.LastIndex, func() {
		// No aclHidden here: an empty list is normal (everything is
		// passing). The catalog watch catches a token that can read nothing.
		if meta.ResultsFilteredByACLs {
			log.Debugf("consul ACLs hid some non-passing checks; the token needs read on service_prefix and node_prefix")
		}
		for _, m := range c.health.changed(checks, meta.LastIndex, c.store.onNode) {
			c.dirty.mark(m.need, m.name)
		}
	}, nil
}

// healthMark is a service to re-read and the index its next read must reach.
type healthMark struct {
	name string
	need uint64
}

// changed returns the services whose view differs from the non-passing
// checks at index: a check that turned non-passing is listed with a new
// status; one that turned passing, or vanished, is missing from the list.
// A view at or past index is newer than the list and is left alone. A
// service is listed with the index its next read must pass: Consul moves a
// service's index on every write to its checks or its nodes' checks, so a
// difference means a write after the view's read.
func (h *healthWatch) changed(checks api.HealthChecks, index uint64, onNode func(string) []string) []healthMark {
	h.mu.Lock()
	defer h.mu.Unlock()
	listed := make(map[checkKey]string, len(checks))
	relevant := map[string][]checkKey{} // service -> its listed checks
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		listed[k] = hc.Status
		for _, name := range checkServices(hc.Node, hc.ServiceName, onNode) {
			relevant[name] = append(relevant[name], k)
		}
	}
	dirty := sets.New[string]()
	for name, keys := range relevant {
		v, ok := h.views[name]
		if !ok || v.index >= index {
			continue // not read yet (the catalog marked it), or read after this list
		}
		for _, k := range keys {
			if v.checks[k] != listed[k] {
				dirty.Insert(name)
				break
			}
		}
	}
	for name, v := range h.views {
		if v.index >= index || dirty.Contains(name) {
			continue
		}
		for k, status := range v.checks {
			if listed[k] != status {
				dirty.Insert(name)
				break
			}
		}
	}
	out := make([]healthMark, 0, len(dirty))
	for name := range dirty {
		out = append(out, healthMark{name: name, need: h.views[name].index + 1})
	}
	return out
}

// checkServices are the services a check is about: its own service, or for
// a node check every service with an instance on that node.
func checkServices(node, service string, onNode func(string) []string) []string {
	if service != "" {
		return []string{service}
	}
	return onNode(node)
}

// noteRead records what a read of service name at index saw.
func (h *healthWatch) noteRead(name string, entries []*api.ServiceEntry, index uint64) {
	v := checkView{index: index, checks: map[checkKey]string{}}
	for _, e := range entries {
		for _, hc := range e.Checks {
			if hc.Status != api.HealthPassing {
				v.checks[checkKey{hc.Node, hc.CheckID}] = hc.Status
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.views[name] = v
}

// forget drops what reads of a removed service saw.
func (h *healthWatch) forget(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.views, name)
}

// forgetIndexes drops the views' indexes after Consul's indexes went
// backwards: every view is then older than any list.
func (h *healthWatch) forgetIndexes() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, v := range h.views {
		v.index = 0
		h.views[name] = v
	}
}
