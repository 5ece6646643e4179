package consul

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// scriptedConsul is a Consul catalog in memory, answering the registry's
// HTTP client as its RoundTripper. It exists for testing/synctest: a real
// Consul is network I/O, which never counts as durably blocked, so a bubble
// could not advance its clock past a blocking query. It keeps the rules of
// Consul's state store (1.16 to 1.22) that the registry relies on
// (agent/consul/state/catalog.go):
//   - /v1/catalog/services answers at the services table's index, which
//     moves on (de)registrations only;
//   - /v1/health/state/<any, critical or warning> at the checks table's
//     index (Consul wakes a query for one status only when a check enters
//     or leaves it; this one wakes on every check write: extra answers,
//     never a missed one);
//   - /v1/catalog/nodes at the nodes table's index, which moves on node
//     writes (address, meta) only;
//   - /v1/health/service/<name> at that service's index, which every write
//     touching the service moves (its instances, its checks, its nodes'
//     checks, its nodes); a service with no instance answers at the
//     extinction index;
//   - blocking queries return when their index passes WaitIndex, or after
//     WaitTime with the same answer.
//
// With enterprise set it also answers as Consul Enterprise does with
// namespaces (?ns=): services and their checks live in their namespace,
// node checks in "default"; a service's answer carries its nodes' checks
// whatever their namespace (parseCheckServiceNodes reads them with a
// wildcard namespace) and its index moves with them
// (updateAllServiceIndexesOfNode, wildcard too); /v1/health/state/<status>
// lists the checks of the namespace asked for only.
//
// Everything else (ACLs, filters other than the health watch's, peering) is
// out of scope: the real-Consul tests cover behaviour, this covers time.
type scriptedConsul struct {
	mu    sync.Mutex
	index uint64 // the raft index: every write takes the next one
	nodes map[string]*api.Node
	// instances by node, then service ID
	instances map[string]map[string]*api.AgentService
	checks    map[checkKey]*api.HealthCheck

	servicesIndex, checksIndex, nodesIndex, extinction uint64
	serviceIndex                                       map[string]uint64

	changed chan struct{} // closed and replaced on every write
	// abandoned is closed and replaced on a restore: blocked queries
	// answer at once, as Consul's abandoned state store makes them.
	abandoned chan struct{}
	requests  map[string]int
	// fault, if set, may answer a request instead of the catalog (nil: no fault).
	fault func(*http.Request) (*http.Response, error)
	// hold, if set, runs before an answer is returned; it may block.
	hold func(*http.Request)
	// enterprise answers ?ns= as Consul Enterprise does (see above).
	enterprise bool
}

func newScriptedConsul() *scriptedConsul {
	return &scriptedConsul{
		index:        10,
		nodes:        map[string]*api.Node{},
		instances:    map[string]map[string]*api.AgentService{},
		checks:       map[checkKey]*api.HealthCheck{},
		serviceIndex: map[string]uint64{},
		changed:      make(chan struct{}),
		abandoned:    make(chan struct{}),
		requests:     map[string]int{},
	}
}

// write runs f under the lock with the next raft index, then wakes blocked queries.
func (s *scriptedConsul) write(f func(idx uint64)) {
	s.mu.Lock()
	s.index++
	f(s.index)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// restore is a snapshot restore at index: every table index drops to it
// (the catalog stays as it is), and blocked queries answer at once.
func (s *scriptedConsul) restore(index uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index = index
	s.servicesIndex, s.checksIndex, s.nodesIndex, s.extinction = index, index, index, min(s.extinction, index)
	for name := range s.serviceIndex {
		s.serviceIndex[name] = index
	}
	close(s.abandoned)
	s.abandoned = make(chan struct{})
}

// setFault sets (or with nil clears) the fault hook.
func (s *scriptedConsul) setFault(f func(*http.Request) (*http.Response, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// setHold sets (or with nil clears) the hold hook.
func (s *scriptedConsul) setHold(f func(*http.Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = f
}

// setNode creates or updates a node (address, meta).
func (s *scriptedConsul) setNode(name, address string, meta map[string]string) {
	s.write(func(idx uint64) { s.setNodeLocked(idx, name, address, meta) })
}

func (s *scriptedConsul) setNodeLocked(idx uint64, name, address string, meta map[string]string) {
	n := s.nodes[name]
	if n == nil {
		n = &api.Node{Node: name, Datacenter: "dc1", CreateIndex: idx}
		s.nodes[name] = n
		s.instances[name] = map[string]*api.AgentService{}
	}
	n.Address, n.Meta, n.ModifyIndex = address, meta, idx
	s.nodesIndex = idx
	s.touchNodeLocked(idx, name)
}

// register adds or replaces an instance with one service check in status;
// the node is created with address 127.0.0.1 if it does not exist.
func (s *scriptedConsul) register(node string, svc api.AgentService, status string) {
	s.write(func(idx uint64) {
		if s.nodes[node] == nil {
			s.setNodeLocked(idx, node, "127.0.0.1", nil)
		}
		svc.Weights = api.AgentWeights{Passing: 1, Warning: 1}
		if old := s.instances[node][svc.ID]; old != nil {
			svc.CreateIndex = old.CreateIndex
		} else {
			svc.CreateIndex = idx
		}
		svc.ModifyIndex = idx
		s.instances[node][svc.ID] = &svc
		s.servicesIndex, s.serviceIndex[svc.Service] = idx, idx
		k := checkKey{node, "service:" + svc.ID}
		create := idx
		if old := s.checks[k]; old != nil {
			create = old.CreateIndex
		}
		s.checks[k] = &api.HealthCheck{Node: node, CheckID: k.id, Name: "ttl", Status: status,
			ServiceID: svc.ID, ServiceName: svc.Service, Namespace: svc.Namespace, CreateIndex: create, ModifyIndex: idx}
		s.checksIndex = idx
	})
}

// deregister removes an instance and its checks.
func (s *scriptedConsul) deregister(node, id string) {
	s.write(func(idx uint64) {
		svc := s.instances[node][id]
		if svc == nil {
			return
		}
		delete(s.instances[node], id)
		delete(s.checks, checkKey{node, "service:" + id})
		s.servicesIndex, s.checksIndex, s.serviceIndex[svc.Service] = idx, idx, idx
		if len(s.serviceEntriesLocked(svc.Service)) == 0 {
			delete(s.serviceIndex, svc.Service)
			s.extinction = idx
		}
	})
}

// setHealth sets the status of an instance's service check.
func (s *scriptedConsul) setHealth(node, id, status string) {
	s.write(func(idx uint64) {
		c := s.checks[checkKey{node, "service:" + id}]
		if c == nil || c.Status == status {
			return
		}
		c.Status, c.ModifyIndex = status, idx
		s.checksIndex, s.serviceIndex[c.ServiceName] = idx, idx
	})
}

// setNodeHealth sets (or creates) a node's serfHealth check.
func (s *scriptedConsul) setNodeHealth(node, status string) {
	s.write(func(idx uint64) {
		k := checkKey{node, "serfHealth"}
		c := s.checks[k]
		if c == nil {
			c = &api.HealthCheck{Node: node, CheckID: k.id, Name: "Serf Health Status", CreateIndex: idx}
			if s.enterprise {
				c.Namespace = "default"
			}
			s.checks[k] = c
		}
		c.Status, c.ModifyIndex = status, idx
		s.checksIndex = idx
		s.touchNodeLocked(idx, node)
	})
}

// touchNodeLocked moves the index of every service with an instance on node.
func (s *scriptedConsul) touchNodeLocked(idx uint64, node string) {
	for _, svc := range s.instances[node] {
		s.serviceIndex[svc.Service] = idx
	}
}

// truth is what istiod should serve: "addr:port" of every passing instance,
// by service name (services with none are absent).
func (s *scriptedConsul) truth() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for _, name := range s.namesLocked() {
		for _, e := range s.serviceEntriesLocked(name) {
			if e.Checks.AggregatedStatus() != api.HealthPassing {
				continue
			}
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			out[name] = append(out[name], fmt.Sprintf("%s:%d", addr, e.Service.Port))
		}
		sort.Strings(out[name])
	}
	return out
}

// requestCount is how many requests reached the catalog, by path prefix.
func (s *scriptedConsul) requestCount(prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for p, c := range s.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

func (s *scriptedConsul) namesLocked() []string { return s.namesInLocked("") }

// namesInLocked lists the services of namespace ns ("": every one).
func (s *scriptedConsul) namesInLocked(ns string) []string {
	names := map[string]bool{}
	for _, insts := range s.instances {
		for _, svc := range insts {
			if ns == "" || s.namespaceOf(svc.Namespace) == ns {
				names[svc.Service] = true
			}
		}
	}
	return sortedKeys(names)
}

// namespaceOf is where an object of namespace ns lives: Enterprise puts
// one that names none in "default".
func (s *scriptedConsul) namespaceOf(ns string) string {
	if ns == "" && s.enterprise {
		return "default"
	}
	return ns
}

// askedNamespace is the namespace a request reads ("": OSS, all of them).
func (s *scriptedConsul) askedNamespace(q map[string][]string) string {
	if !s.enterprise {
		return ""
	}
	if ns := q["ns"]; len(ns) > 0 && ns[0] != "" {
		return ns[0]
	}
	return "default"
}

func (s *scriptedConsul) serviceEntriesLocked(name string) []*api.ServiceEntry {
	var out []*api.ServiceEntry
	for _, node := range sortedKeys(s.instances) {
		for _, id := range sortedKeys(s.instances[node]) {
			svc := s.instances[node][id]
			if svc.Service != name {
				continue
			}
			n := *s.nodes[node]
			e := &api.ServiceEntry{Node: &n, Service: svc, Checks: api.HealthChecks{}}
			for k, c := range s.checks {
				if k.node == node && (c.ServiceID == "" || c.ServiceID == id) {
					cc := *c
					e.Checks = append(e.Checks, &cc)
				}
			}
			sort.Slice(e.Checks, func(i, j int) bool { return e.Checks[i].CheckID < e.Checks[j].CheckID })
			out = append(out, e)
		}
	}
	return out
}

// RoundTrip answers one request from the catalog, blocking as Consul does.
func (s *scriptedConsul) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.requests[req.URL.Path]++
	fault := s.fault
	s.mu.Unlock()
	if fault != nil {
		if resp, err := fault(req); resp != nil || err != nil {
			return resp, err
		}
	}
	q := req.URL.Query()
	waitIndex, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	wait := 5 * time.Minute
	if w := q.Get("wait"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil {
			return nil, fmt.Errorf("scripted consul: bad wait %q", w)
		}
		wait = d
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	s.mu.Lock()
	abandoned := s.abandoned
	s.mu.Unlock()
	for {
		s.mu.Lock()
		body, index, err := s.answerLocked(req.URL.Path, q)
		changed, hold := s.changed, s.hold
		s.mu.Unlock()
		if err != nil {
			return respond(http.StatusNotFound, []byte(err.Error()), 0), nil
		}
		answer := waitIndex == 0 || index > waitIndex
		if !answer {
			select {
			case <-changed:
				continue
			case <-deadline.C:
			case <-abandoned:
			case <-req.Context().Done():
				return nil, req.Context().Err()
			}
		}
		if hold != nil {
			hold(req)
			if err := req.Context().Err(); err != nil {
				return nil, err // the client gave up while it was held
			}
		}
		return respond(http.StatusOK, body, index), nil
	}
}

func (s *scriptedConsul) answerLocked(path string, q map[string][]string) ([]byte, uint64, error) {
	var v any
	var index uint64
	switch {
	case path == "/v1/catalog/services":
		ns := s.askedNamespace(q)
		listing := map[string][]string{}
		for _, name := range s.namesInLocked(ns) {
			listing[name] = []string{}
		}
		for _, insts := range s.instances {
			for _, svc := range insts {
				if ns == "" || s.namespaceOf(svc.Namespace) == ns {
					listing[svc.Service] = append(listing[svc.Service], svc.Tags...)
				}
			}
		}
		v, index = listing, s.servicesIndex
	case strings.HasPrefix(path, "/v1/health/state/"):
		state := strings.TrimPrefix(path, "/v1/health/state/")
		if state != api.HealthAny && !slices.Contains(watchedStates[:], state) {
			return nil, 0, fmt.Errorf("scripted consul: no state %q", state)
		}
		if len(q["filter"]) > 0 {
			return nil, 0, fmt.Errorf("scripted consul: no filters")
		}
		checks := api.HealthChecks{}
		for _, k := range slices.SortedFunc(func(yield func(checkKey) bool) {
			for k := range s.checks {
				if !yield(k) {
					return
				}
			}
		}, func(a, b checkKey) int { return strings.Compare(a.node+"/"+a.id, b.node+"/"+b.id) }) {
			c := s.checks[k]
			if state != api.HealthAny && c.Status != state {
				continue
			}
			if ns := s.askedNamespace(q); ns != "" && s.namespaceOf(c.Namespace) != ns {
				continue
			}
			checks = append(checks, c)
		}
		v, index = checks, s.checksIndex
	case path == "/v1/status/leader":
		v, index = "127.0.0.1:8300", s.index
	case path == "/v1/catalog/nodes":
		nodes := []*api.Node{}
		for _, name := range sortedKeys(s.nodes) {
			nodes = append(nodes, s.nodes[name])
		}
		v, index = nodes, s.nodesIndex
	case strings.HasPrefix(path, "/v1/health/service/"):
		name := strings.TrimPrefix(path, "/v1/health/service/")
		entries := s.serviceEntriesLocked(name)
		if ns := s.askedNamespace(q); ns != "" {
			entries = slices.DeleteFunc(entries, func(e *api.ServiceEntry) bool { return s.namespaceOf(e.Service.Namespace) != ns })
		}
		if entries == nil {
			entries = []*api.ServiceEntry{}
		}
		index = s.serviceIndex[name]
		if index == 0 {
			index = max(s.extinction, 1)
		}
		v = entries
	default:
		return nil, 0, fmt.Errorf("scripted consul: no %s", path)
	}
	body, err := json.Marshal(v)
	return body, index, err
}

func respond(code int, body []byte, index uint64) *http.Response {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	if index > 0 {
		h.Set("X-Consul-Index", strconv.FormatUint(index, 10))
	}
	h.Set("X-Consul-KnownLeader", "true")
	h.Set("X-Consul-LastContact", "0")
	h.Set("X-Consul-Default-ACL-Policy", "allow")
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: h,
		Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
}
