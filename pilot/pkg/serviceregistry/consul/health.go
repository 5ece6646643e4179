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
				c.dirty.markWith(mark{need: m.need, left: m.left}, m.name)
			}
		}, nil
	}
}

// healthMark is a service to re-read and the index its next read must
// reach; left, the checks its read must no longer show in a status.
type healthMark struct {
	name string
	need uint64
	left map[checkKey]string
}

// changed returns the services whose view differs from the checks in state
// at index: a check that entered state is listed; one that left it, or
// vanished, is missing from the list. Checks of other states are another
// list's business. A view at or past index is newer than the list and is
// left alone. A service is listed with what its next read must show: a
// check that entered state was written at its ModifyIndex, which moved the
// service's index (Consul moves it on every write to the service's checks
// or its nodes' checks), so the read must reach that index; a check that
// left state must not be in it any more. Behind a load balancer a lagging
// follower may answer the read; an answer from before the write it was
// marked for is asked of the leader again (service.go).
func (h *healthWatch) changed(checks api.HealthChecks, state string, index uint64, onNode func(string) []string) []healthMark {
	h.mu.Lock()
	defer h.mu.Unlock()
	listed := sets.New[checkKey]()
	relevant := map[string][]*api.HealthCheck{} // service -> its listed checks
	for _, hc := range checks {
		listed.Insert(checkKey{hc.Node, hc.CheckID})
		for _, name := range checkServices(hc.Node, hc.ServiceName, onNode) {
			relevant[name] = append(relevant[name], hc)
		}
	}
	dirty := map[string]*healthMark{}
	markOf := func(name string) *healthMark {
		if dirty[name] == nil {
			dirty[name] = &healthMark{name: name, need: h.views[name].index + 1}
		}
		return dirty[name]
	}
	for name, hcs := range relevant {
		v, ok := h.views[name]
		if !ok || v.index >= index {
			continue // not read yet (the catalog marked it), or read after this list
		}
		for _, hc := range hcs {
			if v.checks[checkKey{hc.Node, hc.CheckID}] != state {
				m := markOf(name)
				m.need = max(m.need, hc.ModifyIndex)
			}
		}
	}
	for name, v := range h.views {
		if v.index >= index {
			continue
		}
		for k, status := range v.checks {
			if status == state && !listed.Contains(k) {
				m := markOf(name)
				if m.left == nil {
					m.left = map[checkKey]string{}
				}
				m.left[k] = state
			}
		}
	}
	out := make([]healthMark, 0, len(dirty))
	for _, m := range dirty {
		out = append(out, *m)
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
