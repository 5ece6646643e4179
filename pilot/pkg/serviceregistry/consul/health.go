package consul

// health.go owns the health detector: one blocking query per check status
// that routes differently from passing (critical, warning). It marks a
// service when one of its checks (or one of its nodes' checks) differs from
// what that service's last read saw.

import (
	"context"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/util/sets"
)

// watchedStates are the statuses the detector lists, one blocking query
// each. Consul indexes checks by status, so each answer costs it the checks
// of that status only, and a query wakes only when a check enters or leaves
// its status. The first design asked for every check filtered by
// `Status != "passing"`: Consul evaluated the filter on every check in the
// datacenter for each answer (docs/architecture.md, Watching). Maintenance
// is a critical check.
var watchedStates = [...]string{api.HealthCritical, api.HealthWarning}

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

// readHealth returns the blocking read of every check in state.
func (c *Controller) readHealth(state string) watchRead {
	return func(ctx context.Context, req request) (uint64, func(), error) {
		var checks api.HealthChecks
		meta, err := c.consul.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
			var m *api.QueryMeta
			var err error
			checks, m, err = c.consul.Health().State(state, q)
			return m, err
		})
		if err != nil {
			return 0, nil, fmt.Errorf("list %s health checks: %w", state, err)
		}
		return meta.LastIndex, func() {
			// No aclHidden here: an empty list is normal (nothing is in
			// state). The catalog watch catches a token that can read nothing.
			if meta.ResultsFilteredByACLs {
				log.Debugf("consul ACLs hid some %s checks; the token needs read on service_prefix and node_prefix", state)
			}
			for _, m := range c.health.changed(checks, state, meta.LastIndex, c.store.onNode) {
				c.dirty.mark(m.need, m.name)
			}
		}, nil
	}
}

// healthMark is a service to re-read and the index its next read must reach.
type healthMark struct {
	name string
	need uint64
}

// changed returns the services whose view differs from the checks in state
// at index: a check that entered state is listed; one that left it, or
// vanished, is missing from the list. Checks of other states are another
// list's business. A view at or past index is newer than the list and is
// left alone. A service is listed with the index its next read must pass:
// Consul moves a service's index on every write to its checks or its
// nodes' checks, so a difference means a write after the view's read.
func (h *healthWatch) changed(checks api.HealthChecks, state string, index uint64, onNode func(string) []string) []healthMark {
	h.mu.Lock()
	defer h.mu.Unlock()
	listed := sets.New[checkKey]()
	relevant := map[string][]checkKey{} // service -> its listed checks
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		listed.Insert(k)
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
			if v.checks[k] != state {
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
			if status == state && !listed.Contains(k) {
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
