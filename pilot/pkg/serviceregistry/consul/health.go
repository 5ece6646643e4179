package consul

import (
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/util/sets"
)

// nonPassingFilter asks Consul only for checks that are not passing. The
// answer's size follows the number of unhealthy checks, not the size of the
// catalog: with every check listed, each health change anywhere made Consul
// encode, and istiod decode, every check in the datacenter (4 MB for 10,000
// checks), which took most of istiod's CPU under churn (see README,
// Performance).
const nonPassingFilter = `Status != "passing"`

// knownCheck is a non-passing check as the last read of its service saw it.
type knownCheck struct {
	service string // "" for a node check
	status  string
}

// readHealth is one blocking read of every non-passing check. A service is
// queued when a check's status differs from what its last read saw: a check
// that turned non-passing is listed with a new status; one that turned
// passing, or vanished, is missing from the list.
func (c *Controller) readHealth(q *api.QueryOptions) (uint64, func(), error) {
	q.Filter = nonPassingFilter
	checks, meta, err := c.client.Health().State(api.HealthAny, q)
	if err != nil {
		return 0, nil, fmt.Errorf("list non-passing health checks: %w", err)
	}
	return meta.LastIndex, func() { c.applyHealth(checks, meta) }, nil
}

// applyHealth queues the services whose non-passing checks changed.
func (c *Controller) applyHealth(checks api.HealthChecks, meta *api.QueryMeta) {
	// No aclFiltered here: an empty list is normal (everything is passing).
	// The catalog watch catches a token that can read nothing.
	if meta.ResultsFilteredByACLs {
		log.Debugf("consul ACLs hid some non-passing checks; the token needs read on service_prefix and node_prefix")
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	listed := make(map[checkKey]knownCheck, len(checks))
	dirty := sets.New[string]()
	mark := func(k checkKey, kc knownCheck) {
		if kc.service != "" {
			dirty.Insert(kc.service)
			return
		}
		for name := range c.nodes[k.node] {
			dirty.Insert(name)
		}
	}
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		kc := knownCheck{service: hc.ServiceName, status: hc.Status}
		listed[k] = kc
		if c.known[k] != kc {
			mark(k, kc)
		}
	}
	for k, kc := range c.known {
		if _, ok := listed[k]; !ok {
			mark(k, kc)
		}
	}
	for name := range dirty {
		if _, ok := c.catalog[name]; ok {
			c.markDirtyLocked(name, now)
		}
	}
}

// noteChecksLocked records the non-passing checks a read of service name saw:
// its own checks replace what earlier reads saw; node checks are shared by
// every service on the node, so the newest read of any of them wins.
func (c *Controller) noteChecksLocked(name string, entries []*api.ServiceEntry) {
	for _, k := range c.knownBySvc[name] {
		delete(c.known, k)
	}
	var mine []checkKey
	for _, e := range entries {
		for _, hc := range e.Checks {
			k := checkKey{hc.Node, hc.CheckID}
			if hc.ServiceID == "" {
				if hc.Status == api.HealthPassing {
					delete(c.known, k)
				} else {
					c.known[k] = knownCheck{status: hc.Status}
				}
				continue
			}
			if hc.Status != api.HealthPassing {
				c.known[k] = knownCheck{service: name, status: hc.Status}
				mine = append(mine, k)
			}
		}
	}
	if len(mine) == 0 {
		delete(c.knownBySvc, name)
	} else {
		c.knownBySvc[name] = mine
	}
}

// forgetChecksLocked drops what reads of a removed service saw.
func (c *Controller) forgetChecksLocked(name string) {
	for _, k := range c.knownBySvc[name] {
		delete(c.known, k)
	}
	delete(c.knownBySvc, name)
}
