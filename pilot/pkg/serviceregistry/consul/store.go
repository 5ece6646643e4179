package consul

// store.go owns what the registry serves: each Consul service's Istio
// service, endpoints and instances; the indexes istiod's lookups need (by
// hostname, instance IP and node); the VIPs; and what the last read of each
// listed service found. Only the consumer (service.go) writes to it.

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/util/sets"
)

// serviceState is what the registry serves for one Consul service. It is
// never modified once stored: an update stores a new one.
type serviceState struct {
	name    string
	service *model.Service
	// shared is the same service under the hostname every datacenter
	// serves (--consulDatacenterFailover, a non-local datacenter's
	// registry); nil otherwise. It has the same endpoints.
	shared      *model.Service
	endpoints   []*model.IstioEndpoint
	routed      []*instance // the instance of each endpoint, at the same index
	instances   []*instance
	fingerprint string
	epKey       string
	nodes       []string
}

// readRecord is what the last read of one listed service found, served or not.
type readRecord struct {
	index     uint64 // Consul's index of the answer
	at        time.Time
	skipped   []skipped
	notServed string
	conflicts []protocolConflict
	// err is why the last read of the service failed while Consul answered
	// others (ACLs hide its nodes); what was served before stays served.
	err string
}

type store struct {
	mu        sync.RWMutex
	services  map[string]*serviceState // by Consul name; served services only
	byHost    map[host.Name]*serviceState
	byIP      map[string][]*serviceState
	nodes     map[string]sets.String // node -> services with instances there
	reads     map[string]readRecord  // by Consul name; every service read since it was listed
	vips      *vipPool
	id        cluster.ID // this registry's, in the pool
	endpoints int        // of all services, so the gauge costs O(1) per update
	// skipped counts the registrations the last reads left out, by kind of
	// reason, for the same reason.
	skipped map[string]int
	metrics *registryMetrics
}

func newStore(vips *vipPool, id cluster.ID, m *registryMetrics) *store {
	m.vipCapacity.Record(float64(vips.capacity()))
	m.vips.Record(0)
	return &store{
		id:       id,
		services: map[string]*serviceState{},
		byHost:   map[host.Name]*serviceState{},
		byIP:     map[string][]*serviceState{},
		nodes:    map[string]sets.String{},
		reads:    map[string]readRecord{},
		vips:     vips,
		skipped:  map[string]int{},
		metrics:  m,
	}
}

// change is what one update did to a service.
type change struct {
	prev, next       *serviceState // next is nil when the service is no longer served
	serviceChanged   bool          // new, removed, or ports / VIP / identities changed
	endpointsChanged bool
}

// update stores the result of reading service name. A conversion without a
// service removes it.
func (s *store) update(name string, conv conversion, rec readRecord) change {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countSkipped(s.reads[name].skipped, rec.skipped)
	s.reads[name] = rec
	prev := s.services[name]
	if conv.service == nil {
		if prev == nil {
			return change{}
		}
		s.removeLocked(prev)
		return change{prev: prev, serviceChanged: true, endpointsChanged: true}
	}
	svc := conv.service
	svc.DefaultAddress = s.vips.lookup(svc.Hostname)
	if conv.shared != nil {
		conv.shared.DefaultAddress = s.vips.lookup(conv.shared.Hostname)
	}
	next := &serviceState{
		name:        name,
		service:     svc,
		shared:      conv.shared,
		endpoints:   conv.endpoints,
		routed:      conv.routed,
		instances:   conv.instances,
		fingerprint: serviceFingerprint(svc) + serviceFingerprint(conv.shared),
		epKey:       endpointsKey(conv.endpoints),
		nodes:       nodesOf(conv.instances),
	}
	ch := change{
		prev:             prev,
		next:             next,
		serviceChanged:   prev == nil || prev.fingerprint != next.fingerprint,
		endpointsChanged: prev == nil || prev.epKey != next.epKey,
	}
	switch {
	case !ch.serviceChanged:
		// Keep the objects istiod already holds: same service, same identity.
		next.service, next.shared = prev.service, prev.shared
	case prev != nil:
		svc.CreationTime = prev.service.CreationTime
	default:
		svc.CreationTime = time.Now()
	}
	if ch.serviceChanged && next.shared != nil {
		next.shared.CreationTime = svc.CreationTime
	}
	if prev != nil {
		s.unindexLocked(prev)
	}
	s.indexLocked(next)
	return ch
}

// remove forgets a service that left the catalog; it returns what was
// served for it, if anything.
func (s *store) remove(name string) *serviceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countSkipped(s.reads[name].skipped, nil)
	delete(s.reads, name)
	prev := s.services[name]
	if prev != nil {
		s.removeLocked(prev)
	}
	return prev
}

func (s *store) removeLocked(prev *serviceState) {
	s.unindexLocked(prev)
	s.recordGauges()
}

// unpushed says what is stored for a service may not have reached istiod:
// its next update compares with nothing, so it is pushed whole.
func (s *store) unpushed(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.services[name]; st != nil {
		cp := *st
		cp.fingerprint, cp.epKey = "", ""
		s.unindexLocked(st)
		s.indexLocked(&cp)
	}
}

// failed records that a read of a listed service failed while Consul
// answered others; what is served for it stays.
func (s *store) failed(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.reads[name]
	rec.err = err.Error()
	s.reads[name] = rec
}

// assignVIPs makes hosts this registry's in the VIP pool and returns the
// served services whose VIP that moved, to be re-pushed.
func (s *store) assignVIPs(hosts []host.Name) []string {
	s.vips.assign(s.id, hosts)
	return s.movedVIPs()
}

// movedVIPs returns the served services whose VIP is no longer the pool's.
func (s *store) movedVIPs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.metrics.vips.Record(float64(s.vips.used(s.id)))
	var moved []string
	for name, st := range s.services {
		if st.service.DefaultAddress != s.vips.lookup(st.service.Hostname) ||
			st.shared != nil && st.shared.DefaultAddress != s.vips.lookup(st.shared.Hostname) {
			moved = append(moved, name)
		}
	}
	return moved
}

func (s *store) indexLocked(st *serviceState) {
	s.services[st.name] = st
	s.byHost[st.service.Hostname] = st
	if st.shared != nil {
		s.byHost[st.shared.Hostname] = st
	}
	s.endpoints += len(st.endpoints)
	for _, ip := range addressesOf(st.instances) {
		s.byIP[ip] = append(s.byIP[ip], st)
	}
	for _, n := range st.nodes {
		if s.nodes[n] == nil {
			s.nodes[n] = sets.New[string]()
		}
		s.nodes[n].Insert(st.name)
	}
	s.recordGauges()
}

func (s *store) unindexLocked(st *serviceState) {
	delete(s.services, st.name)
	for _, svc := range st.hosted() {
		if s.byHost[svc.Hostname] == st {
			delete(s.byHost, svc.Hostname)
		}
	}
	s.endpoints -= len(st.endpoints)
	for _, ip := range addressesOf(st.instances) {
		s.byIP[ip] = slices.DeleteFunc(s.byIP[ip], func(x *serviceState) bool { return x.name == st.name })
		if len(s.byIP[ip]) == 0 {
			delete(s.byIP, ip)
		}
	}
	for _, n := range st.nodes {
		s.nodes[n].Delete(st.name)
		if s.nodes[n].IsEmpty() {
			delete(s.nodes, n)
		}
	}
}

// recordGauges is O(1): it runs on every update (a count over every service
// made the first sync of 10,000 services quadratic).
func (s *store) recordGauges() {
	s.metrics.services.Record(float64(len(s.services)))
	s.metrics.endpoints.Record(float64(s.endpoints))
}

// countSkipped replaces a service's skipped registrations, before, with
// after in the counts by reason, and exports the reasons that moved.
func (s *store) countSkipped(before, after []skipped) {
	if len(before) == 0 && len(after) == 0 {
		return
	}
	moved := map[string]bool{}
	for _, k := range before {
		s.skipped[k.kind]--
		moved[k.kind] = true
	}
	for _, k := range after {
		s.skipped[k.kind]++
		moved[k.kind] = true
	}
	for kind := range moved {
		s.metrics.skipped(kind, s.skipped[kind])
	}
}

// get returns what is served for a Consul service, or nil.
func (s *store) get(name string) *serviceState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.services[name]
}

func (s *store) byHostname(h host.Name) *serviceState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byHost[h]
}

// list returns every served service, sorted by name.
func (s *store) list() []*serviceState {
	s.mu.RLock()
	out := make([]*serviceState, 0, len(s.services))
	for _, st := range s.services {
		out = append(out, st)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// atIP returns the services with an instance at ip.
func (s *store) atIP(ip string) []*serviceState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.byIP[ip])
}

// onNode returns the services with an instance on node.
func (s *store) onNode(node string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nodes[node].UnsortedList()
}

// readIndex is the Consul index of the last successful read of a listed
// service (what is served for it).
func (s *store) readIndex(name string) (uint64, bool) {
	index, ok, _ := s.readIndexOf(name)
	return index, ok
}

// readIndexOf is readIndex, and whether the service's last read was
// refused (its read record holds an error).
func (s *store) readIndexOf(name string) (index uint64, ok, refused bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.reads[name]
	return r.index, ok, r.err != ""
}

// forgetReadIndexes drops every read's index: after Consul's indexes went
// backwards they compare with nothing.
func (s *store) forgetReadIndexes() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.reads {
		r.index = 0
		s.reads[name] = r
	}
}

// forgetReadIndex is forgetReadIndexes for one service, whose own watch
// saw Consul's index go backwards.
func (s *store) forgetReadIndex(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.reads[name]; ok {
		r.index = 0
		s.reads[name] = r
	}
}

// reads returns the read records, by Consul name.
func (s *store) records() map[string]readRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]readRecord, len(s.reads))
	for k, v := range s.reads {
		out[k] = v
	}
	return out
}

// counts returns the numbers of served services and endpoints, and VIPs in use.
func (s *store) counts() (services, endpoints, vips int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.services), s.endpoints, s.vips.used(s.id)
}

// hosted are the Istio services a Consul service is served as: its own,
// and the shared one with --consulDatacenterFailover.
func (st *serviceState) hosted() []*model.Service {
	if st.shared == nil {
		return []*model.Service{st.service}
	}
	return []*model.Service{st.service, st.shared}
}

// serviceFingerprint covers every service field the registry sets, so equal
// fingerprints mean no service-level push is needed.
func serviceFingerprint(s *model.Service) string {
	if s == nil {
		return ""
	}
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
