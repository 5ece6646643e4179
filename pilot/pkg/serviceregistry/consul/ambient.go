package consul

// ambient.go owns what ambient mode sees of Consul: each served service as
// a ServiceEntry and each healthy instance as a WorkloadEntry selected by
// it, in krt collections istiod's ambient index joins with its own
// informer-backed ones (patch 0004). The consumer writes them from the same
// changes it pushes to sidecars, so both see one Consul state; with ambient
// off the collections do not exist.

import (
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"istio.io/api/label"
	networking "istio.io/api/networking/v1alpha3"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/kube/krt"
	"istio.io/istio/pkg/spiffe"
)

// Labels on the objects ambient mode sees.
const (
	// LabelService selects a Consul service's WorkloadEntries.
	LabelService = "consul.pilot-consul.io/service"
	// LabelRegistry names the registry (Consul cluster × datacenter).
	LabelRegistry = "consul.pilot-consul.io/registry"
	// MetaTunnel is the Consul meta key that says an instance accepts
	// HBONE ("http"), e.g. a VM running ztunnel. Everything else is
	// reached in plaintext.
	MetaTunnel = "tunnel"
)

type ambientFeed struct {
	// services holds, in the first registry's feed, the shared hostnames'
	// ServiceEntries too (ambientshared.go).
	services  krt.StaticCollection[*networkingclient.ServiceEntry]
	workloads krt.StaticCollection[*networkingclient.WorkloadEntry]
	mu        sync.Mutex
	published map[string][]string // Consul name -> keys of its WorkloadEntries
}

func newAmbientFeed(clusterID string, synced krt.Syncer) *ambientFeed {
	return &ambientFeed{
		services: krt.NewStaticCollection[*networkingclient.ServiceEntry](synced, nil,
			krt.WithName("consul/"+clusterID+"/ServiceEntries")),
		workloads: krt.NewStaticCollection[*networkingclient.WorkloadEntry](synced, nil,
			krt.WithName("consul/"+clusterID+"/WorkloadEntries")),
		published: map[string][]string{},
	}
}

// AmbientInputs are the ServiceEntries and WorkloadEntries the registry
// publishes for istiod's ambient index. The registry publishes only once
// asked, so with ambient off it does no work for it; ask before Run.
func (c *Controller) AmbientInputs() (krt.Collection[*networkingclient.ServiceEntry], krt.Collection[*networkingclient.WorkloadEntry]) {
	if c.ambient == nil {
		c.ambient = newAmbientFeed(string(c.opts.ClusterID), syncerOf{c.sync})
		if c.opts.shared != nil {
			c.opts.shared.attach(c.opts.ClusterID, c.ambient.services)
		}
	}
	return c.ambient.services, c.ambient.workloads
}

// publish brings the ambient objects of one Consul service in line with
// what the store now serves for it (nil: nothing).
func (c *Controller) publish(name string, s *serviceState) {
	f := c.ambient
	if f == nil {
		return
	}
	if s != nil && c.opts.KubernetesHas(s.service.Hostname) {
		s = nil // Kubernetes wins, as for sidecars
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	seName := c.objectName(name)
	seKey := c.args.Mapping.Namespace + "/" + seName
	var wes []*networkingclient.WorkloadEntry
	if s != nil {
		wes = c.workloadEntries(seName, s)
	}
	own := s != nil
	if sh := c.opts.shared; sh != nil {
		// The shared hostname's ServiceEntry is the feed's, whichever
		// registry serves it; this registry's own is the datacenter's.
		var part *sharedPart
		switch {
		case s == nil:
		case c.conv.remoteDC == "":
			part, own = &sharedPart{service: s.service, endpoints: s.endpoints, workloads: wes}, false
		case !c.opts.KubernetesHas(s.shared.Hostname):
			part = &sharedPart{service: s.shared, endpoints: s.endpoints, workloads: wes}
		}
		sh.set(c.opts.ClusterID, name, part)
	}
	if !own {
		f.services.DeleteObject(seKey)
	}
	if own {
		se := c.serviceEntry(seName, s)
		if c.opts.InlineEndpoints {
			inline(se, wes)
		}
		f.services.ConditionalUpdateObject(se)
	}
	if c.opts.InlineEndpoints || s == nil {
		wes = nil // inline: the ServiceEntries carry them
	}
	var keys []string
	live := map[string]bool{}
	for _, we := range wes {
		k := we.Namespace + "/" + we.Name
		f.workloads.ConditionalUpdateObject(we)
		keys, live[k] = append(keys, k), true
	}
	for _, k := range f.published[name] {
		if !live[k] {
			f.workloads.DeleteObject(k)
		}
	}
	if len(keys) == 0 {
		delete(f.published, name)
	} else {
		f.published[name] = keys
	}
}

// inline puts a service's WorkloadEntries into its ServiceEntry's
// endpoints, in place of the selector (Options.InlineEndpoints).
func inline(se *networkingclient.ServiceEntry, wes []*networkingclient.WorkloadEntry) {
	se.Spec.WorkloadSelector = nil
	se.Spec.Endpoints = make([]*networking.WorkloadEntry, 0, len(wes))
	for _, we := range wes {
		se.Spec.Endpoints = append(se.Spec.Endpoints, &we.Spec)
	}
}

// objectName is the Kubernetes name of a Consul service's ServiceEntry,
// unique across the registries of one istiod.
func (c *Controller) objectName(name string) string {
	id := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, strings.ToLower(string(c.opts.ClusterID)))
	return id + "-" + name
}

func (c *Controller) serviceEntry(seName string, s *serviceState) *networkingclient.ServiceEntry {
	return newServiceEntry(seEntry{
		name: seName, namespace: c.args.Mapping.Namespace, registry: c.opts.ClusterID,
		service: s.service, created: s.service.CreationTime, ports: s.service.Ports,
		selector: map[string]string{LabelService: seName}, endpoints: s.endpoints,
	})
}

// seEntry is what a ServiceEntry ambient sees is made of.
type seEntry struct {
	name, namespace string
	registry        cluster.ID
	service         *model.Service // hostname and VIP
	created         time.Time
	ports           model.PortList
	selector        map[string]string
	endpoints       []*model.IstioEndpoint // for the waypoint labels
}

func newServiceEntry(e seEntry) *networkingclient.ServiceEntry {
	se := &networkingclient.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{
			Name: e.name, Namespace: e.namespace,
			Labels:            map[string]string{LabelRegistry: string(e.registry)},
			CreationTimestamp: metav1.NewTime(e.created),
		},
	}
	waypointLabels(se, e.endpoints)
	spec := &se.Spec
	spec.Hosts = []string{string(e.service.Hostname)}
	spec.Location = networking.ServiceEntry_MESH_INTERNAL
	spec.Resolution = networking.ServiceEntry_STATIC
	spec.WorkloadSelector = &networking.WorkloadSelector{Labels: e.selector}
	if e.service.DefaultAddress != "" {
		spec.Addresses = []string{e.service.DefaultAddress}
	}
	for _, p := range e.ports {
		spec.Ports = append(spec.Ports, &networking.ServicePort{Number: uint32(p.Port), Protocol: string(p.Protocol), Name: p.Name})
	}
	return se
}

// waypointLabels binds a service to a waypoint through its ServiceEntry's
// labels, as Consul says in the instances' tags (meta keys cannot hold
// "/"): the value most endpoints carry.
func waypointLabels(se *networkingclient.ServiceEntry, endpoints []*model.IstioEndpoint) {
	for _, k := range []string{label.IoIstioUseWaypoint.Name, label.IoIstioUseWaypointNamespace.Name} {
		if v := mostCommonLabel(endpoints, k); v != "" {
			se.Labels[k] = v
		}
	}
}

// mostCommonLabel is the value of label key most endpoints carry, ties to
// the alphabetically first, as pickProtocol decides ports; "" if none does.
func mostCommonLabel(endpoints []*model.IstioEndpoint, key string) string {
	counts := map[string]int{}
	for _, ep := range endpoints {
		if v := ep.Labels[key]; v != "" {
			counts[v]++
		}
	}
	best := ""
	for _, v := range sortedKeys(counts) {
		if best == "" || counts[v] > counts[best] {
			best = v
		}
	}
	return best
}

// workloadEntries are the instances ambient routes to: healthy ones only
// (a WorkloadEntry has no health, so an unhealthy one would get traffic).
func (c *Controller) workloadEntries(seName string, s *serviceState) []*networkingclient.WorkloadEntry {
	var out []*networkingclient.WorkloadEntry
	for i, ep := range s.endpoints {
		if ep.HealthStatus != model.Healthy {
			continue
		}
		id := s.routed[i].id
		lbl := labels.Instance{}
		for k, v := range ep.Labels {
			lbl[k] = v
		}
		lbl[LabelService], lbl[LabelRegistry] = seName, string(c.opts.ClusterID)
		if c.opts.shared != nil {
			lbl[LabelShared] = s.name
		}
		if ep.TLSMode == model.IstioMutualTLSModeLabel {
			lbl[label.SecurityTlsMode.Name] = model.IstioMutualTLSModeLabel
		}
		if ep.Labels[MetaTunnel] == model.TunnelHTTP {
			lbl[model.TunnelLabel] = model.TunnelHTTP
		}
		out = append(out, &networkingclient.WorkloadEntry{
			ObjectMeta: metav1.ObjectMeta{
				Name: seName + "-" + instanceHash(ep.NodeName, id), Namespace: c.args.Mapping.Namespace,
				Labels:      lbl,
				Annotations: map[string]string{"consul.pilot-consul.io/instance": id, "consul.pilot-consul.io/node": ep.NodeName},
			},
			Spec: networking.WorkloadEntry{
				Address:        ep.Addresses[0],
				Ports:          map[string]uint32{ep.ServicePortName: ep.EndpointPort},
				Labels:         lbl,
				ServiceAccount: c.serviceAccountName(ep.ServiceAccount),
				Locality:       ep.Locality.Label,
				Weight:         ep.LbWeight,
			},
		})
	}
	return out
}

// serviceAccountName turns an instance's SPIFFE identity back into the
// service account a WorkloadEntry names: ambient derives the identity from
// the trust domain, the WorkloadEntry's namespace and that name, so an
// identity in another namespace cannot be expressed and is left out.
func (c *Controller) serviceAccountName(id string) string {
	if id == "" {
		return ""
	}
	parsed, err := spiffe.ParseIdentity(id)
	if err != nil || parsed.Namespace != c.args.Mapping.Namespace {
		log.Debugf("consul identity %s is not in namespace %s: ambient workloads carry none", id, c.args.Mapping.Namespace)
		return ""
	}
	return parsed.ServiceAccount
}

// syncerOf reports a registry's first sync to krt, so the ambient index
// is synced only once the Consul services are in it (or SyncTimeout passed).
type syncerOf struct{ t *syncTracker }

func (s syncerOf) HasSynced() bool { return s.t.synced.Load() }

func (s syncerOf) WaitUntilSynced(stop <-chan struct{}) bool {
	select {
	case <-s.t.done:
		return true
	case <-stop:
		return false
	}
}

func instanceHash(node, id string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(node + "/" + id))
	return fmt.Sprintf("%016x", h.Sum64())[:10]
}
