package consul

import (
	"fmt"
	"strings"
	"sync"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/util/sets"
)

// istiodSide stands where istiod's DiscoveryServer stands: it applies
// endpoint updates and service deletions to a real model.EndpointIndex, as
// DiscoveryServer.EDSUpdate / EDSCacheUpdate / SvcUpdate do, so tests see
// the shards istiod would hold; and it logs every call in order, service
// handler events included ("eds-cache web.service.consul", "svc delete …",
// "handler add …").
type istiodSide struct {
	index *model.EndpointIndex
	mu    sync.Mutex
	log   []string
	// before runs before a call is applied (and logged); it may block, to
	// hold a push where it is.
	before func(call, hostname string)
}

var _ model.XDSUpdater = &istiodSide{}

func newIstiodSide() *istiodSide {
	return &istiodSide{index: model.NewEndpointIndex(model.DisabledCache{})}
}

func (s *istiodSide) record(call, hostname string) {
	s.mu.Lock()
	before := s.before
	s.mu.Unlock()
	if before != nil {
		before(call, hostname)
	}
	s.mu.Lock()
	s.log = append(s.log, call+" "+hostname)
	s.mu.Unlock()
}

// hold sets the hook run before each call.
func (s *istiodSide) hold(before func(call, hostname string)) {
	s.mu.Lock()
	s.before = before
	s.mu.Unlock()
}

// calls returns the calls so far about hostname, in order, without the hostname.
func (s *istiodSide) calls(hostname string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.log {
		if call, h, _ := cutLast(l); h == hostname {
			out = append(out, call)
		}
	}
	return out
}

// hasShard reports whether istiod would hold endpoint shards for hostname.
func (s *istiodSide) hasShard(hostname, namespace string) bool {
	_, ok := s.index.ShardsForService(hostname, namespace)
	return ok
}

func (s *istiodSide) EDSUpdate(shard model.ShardKey, hostname, ns string, eps []*model.IstioEndpoint) {
	s.record("eds", hostname)
	s.index.UpdateServiceEndpoints(shard, hostname, ns, eps, true)
}

func (s *istiodSide) EDSCacheUpdate(shard model.ShardKey, hostname, ns string, eps []*model.IstioEndpoint) {
	s.record("eds-cache", hostname)
	s.index.UpdateServiceEndpoints(shard, hostname, ns, eps, false)
}

func (s *istiodSide) SvcUpdate(shard model.ShardKey, hostname, ns string, event model.Event) {
	s.record("svc "+event.String(), hostname)
	if event == model.EventDelete {
		s.index.DeleteServiceShard(shard, hostname, ns, false)
	}
}

func (s *istiodSide) ConfigUpdate(*model.PushRequest)  {}
func (s *istiodSide) ProxyUpdate(cluster.ID, string)   {}
func (s *istiodSide) RemoveShard(shard model.ShardKey) { s.index.DeleteShard(shard) }

// PruneShard is XDSUpdater's from Istio 1.31 on; the registry never calls
// it (it deletes what left, service by service).
func (s *istiodSide) PruneShard(model.ShardKey, map[string]sets.String) {}
func (s *istiodSide) handler(prev, curr *model.Service, event model.Event) {
	s.record("handler "+event.String(), string(curr.Hostname))
}

// cutLast splits "a b c" into "a b" and "c".
func cutLast(l string) (string, string, bool) {
	i := strings.LastIndex(l, " ")
	if i < 0 {
		return l, "", false
	}
	return l[:i], l[i+1:], true
}

// String is for failure messages.
func (s *istiodSide) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.log)
}
