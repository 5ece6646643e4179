package consul

// ambientshared.go owns, with --consulDatacenterFailover, what ambient mode
// and consul-mcp see of the hostname every datacenter shares: one
// ServiceEntry per Consul service, selecting every datacenter's
// WorkloadEntries of it. One, not one per datacenter: ambient keeps a
// single ServiceEntry per hostname (the oldest) and drops the others' hosts,
// while istiod's ServiceEntry registry adds up the instances of every
// ServiceEntry of a hostname, so two selecting one WorkloadEntry would
// send its endpoint twice.

import (
	"maps"
	"slices"
	"sync"

	networkingclient "istio.io/client-go/pkg/apis/networking/v1"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/kube/krt"
)

// LabelShared selects a Consul service's WorkloadEntries of every
// datacenter (--consulDatacenterFailover): its value is the Consul name.
const LabelShared = "consul.pilot-consul.io/shared"

// sharedObjectPrefix names the shared hostname's ServiceEntry: a dot,
// which no Consul name that is served holds, keeps it apart from every
// registry's own objects (<registry>-<name>).
const sharedObjectPrefix = "failover."

// sharedFeed is the shared hostnames' ServiceEntries of the registries of
// one istiod. Each registry reports what it serves of a Consul service
// (set); the ServiceEntry follows the first registry, in --consulDatacenter
// order, that serves it, with every registry's ports. It is published in
// the first registry's ambient collection (attach), so istiod joins no
// collection more than it did.
type sharedFeed struct {
	namespace string
	inline    bool // Options.InlineEndpoints
	mu        sync.Mutex
	order     []cluster.ID
	out       krt.StaticCollection[*networkingclient.ServiceEntry]
	attached  bool // out is set
	byName    map[string]map[cluster.ID]*sharedPart
}

// sharedPart is one registry's share of a Consul service: its service
// under the shared hostname and its endpoints.
type sharedPart struct {
	service   *model.Service
	endpoints []*model.IstioEndpoint
	workloads []*networkingclient.WorkloadEntry // for inline endpoints
}

func newSharedFeed(namespace string, inline bool) *sharedFeed {
	return &sharedFeed{namespace: namespace, inline: inline, byName: map[string]map[cluster.ID]*sharedPart{}}
}

// join adds a registry, in order.
func (f *sharedFeed) join(id cluster.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.order = append(f.order, id)
}

// attach publishes into the ambient collection of registry id if it is
// the first one.
func (f *sharedFeed) attach(id cluster.ID, out krt.StaticCollection[*networkingclient.ServiceEntry]) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.order) == 0 || f.order[0] != id {
		return
	}
	f.out, f.attached = out, true
	for name, parts := range f.byName {
		f.out.ConditionalUpdateObject(f.serviceEntry(name, parts))
	}
}

// set records what registry id serves of Consul service name under the
// shared hostname (nil: nothing) and republishes its ServiceEntry.
func (f *sharedFeed) set(id cluster.ID, name string, p *sharedPart) {
	f.mu.Lock()
	defer f.mu.Unlock()
	parts := f.byName[name]
	if p == nil {
		delete(parts, id)
	} else {
		if parts == nil {
			parts = map[cluster.ID]*sharedPart{}
			f.byName[name] = parts
		}
		parts[id] = p
	}
	if len(parts) == 0 {
		delete(f.byName, name)
	}
	switch {
	case !f.attached:
	case len(parts) == 0:
		f.out.DeleteObject(f.namespace + "/" + sharedObjectPrefix + name)
	default:
		f.out.ConditionalUpdateObject(f.serviceEntry(name, parts))
	}
}

func (f *sharedFeed) serviceEntry(name string, parts map[cluster.ID]*sharedPart) *networkingclient.ServiceEntry {
	var ordered []*sharedPart
	var owner cluster.ID
	for _, id := range f.order { // under mu (set, attach)
		if p := parts[id]; p != nil {
			if owner == "" {
				owner = id
			}
			ordered = append(ordered, p)
		}
	}
	svc := ordered[0].service
	created := svc.CreationTime
	var endpoints []*model.IstioEndpoint
	var workloads []*networkingclient.WorkloadEntry
	ports := map[int]*model.Port{}
	for _, p := range ordered {
		workloads = append(workloads, p.workloads...)
		if p.service.CreationTime.Before(created) {
			created = p.service.CreationTime
		}
		endpoints = append(endpoints, p.endpoints...)
		for _, port := range p.service.Ports {
			if ports[port.Port] == nil {
				ports[port.Port] = port // the first registry's protocol wins
			}
		}
	}
	var ordPorts model.PortList
	for _, n := range slices.Sorted(maps.Keys(ports)) {
		ordPorts = append(ordPorts, ports[n])
	}
	se := newServiceEntry(seEntry{
		name: sharedObjectPrefix + name, namespace: f.namespace, registry: owner,
		service: svc, created: created, ports: ordPorts,
		selector: map[string]string{LabelShared: name}, endpoints: endpoints,
	})
	if f.inline {
		inline(se, workloads)
	}
	return se
}
