package consul

// health.go owns the health detector: one blocking query for the checks
// that are not passing. It marks a service when one of its checks (or one
// of its nodes' checks) differs from what the service's last read saw.

import (
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/util/sets"
)

// nonPassingFilter asks Consul only for checks that are not passing. The
// answer's size follows the number of unhealthy checks, not the size of the
// catalog: with every check listed, each health change anywhere made Consul
// encode, and istiod decode, every check in the datacenter (README,
// Performance).
const nonPassingFilter = `Status != "passing"`

type checkKey struct{ node, id string }

// knownCheck is a non-passing check as the last read of its service saw it.
type knownCheck struct {
	service string // "" for a node check
	status  string
}

type healthWatch struct {
	mu    sync.Mutex
	known map[checkKey]knownCheck // non-passing checks as service reads saw them
	bySvc map[string][]checkKey   // service -> its own checks in known
}

func newHealthWatch() *healthWatch {
	return &healthWatch{known: map[checkKey]knownCheck{}, bySvc: map[string][]checkKey{}}
}

// readHealth is one blocking read of every non-passing check.
func (c *Controller) readHealth(q *api.QueryOptions) (uint64, func(), error) {
	q.Filter = nonPassingFilter
	checks, meta, err := c.consul.Health().State(api.HealthAny, q)
	if err != nil {
		return 0, nil, fmt.Errorf("list non-passing health checks: %w", err)
	}
	return meta.LastIndex, func() {
		// No aclFiltered here: an empty list is normal (everything is
		// passing). The catalog watch catches a token that can read nothing.
		if meta.ResultsFilteredByACLs {
			log.Debugf("consul ACLs hid some non-passing checks; the token needs read on service_prefix and node_prefix")
		}
		c.dirty.mark(c.health.changed(checks, c.store.onNode)...)
	}, nil
}

// changed returns the services whose non-passing checks differ from what
// their last reads saw: a check that turned non-passing is listed with a new
// status; one that turned passing, or vanished, is missing from the list.
func (h *healthWatch) changed(checks api.HealthChecks, onNode func(string) []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	listed := make(map[checkKey]knownCheck, len(checks))
	dirty := sets.New[string]()
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		kc := knownCheck{service: hc.ServiceName, status: hc.Status}
		listed[k] = kc
		if h.known[k] != kc {
			dirty.InsertAll(checkServices(k.node, kc.service, onNode)...)
		}
	}
	for k, kc := range h.known {
		if _, ok := listed[k]; !ok {
			dirty.InsertAll(checkServices(k.node, kc.service, onNode)...)
		}
	}
	return dirty.UnsortedList()
}

// checkServices are the services a check is about: its own service, or for
// a node check every service with an instance on that node.
func checkServices(node, service string, onNode func(string) []string) []string {
	if service != "" {
		return []string{service}
	}
	return onNode(node)
}

// noteRead records the non-passing checks a read of service name saw: its
// own checks replace what earlier reads saw; node checks are shared by every
// service on the node, so the newest read of any of them wins.
func (h *healthWatch) noteRead(name string, entries []*api.ServiceEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.bySvc[name] {
		delete(h.known, k)
	}
	var mine []checkKey
	for _, e := range entries {
		for _, hc := range e.Checks {
			k := checkKey{hc.Node, hc.CheckID}
			if hc.ServiceID == "" {
				if hc.Status == api.HealthPassing {
					delete(h.known, k)
				} else {
					h.known[k] = knownCheck{status: hc.Status}
				}
				continue
			}
			if hc.Status != api.HealthPassing {
				h.known[k] = knownCheck{service: name, status: hc.Status}
				mine = append(mine, k)
			}
		}
	}
	if len(mine) == 0 {
		delete(h.bySvc, name)
	} else {
		h.bySvc[name] = mine
	}
}

// forget drops what reads of a removed service saw.
func (h *healthWatch) forget(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range h.bySvc[name] {
		delete(h.known, k)
	}
	delete(h.bySvc, name)
}
