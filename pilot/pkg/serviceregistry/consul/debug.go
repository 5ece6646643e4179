package consul

// debug.go owns /debug/consulz: for each registry, what it reads, what it
// serves, and why anything it read is not served. It is what an operator
// looks at when a Consul service does not show up in the mesh (docs/debugging.md).

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"istio.io/istio/pilot/pkg/serviceregistry"
)

// debugView is the answer of /debug/consulz.
type debugView struct {
	Registries []registryView `json:"registries"`
}

type registryView struct {
	Cluster string     `json:"cluster"`
	Consul  consulView `json:"consul"`
	Synced  bool       `json:"synced"`
	Counts  countsView `json:"counts"`
	// Services are the services read and served (Kubernetes may hide some).
	Services []serviceView `json:"services"`
	// NotServed are listed services none of whose registrations is served.
	NotServed []notServedView `json:"notServed"`
	// HiddenByKubernetes are hostnames a Kubernetes service also has: istiod
	// serves the Kubernetes one.
	HiddenByKubernetes []string `json:"hiddenByKubernetes"`
}

type consulView struct {
	Address            string     `json:"address"`
	Datacenter         string     `json:"datacenter"` // "" is the agent's own
	Reachable          bool       `json:"reachable"`
	LastSuccessfulRead *time.Time `json:"lastSuccessfulRead,omitempty"`
	LastError          string     `json:"lastError,omitempty"`
	CatalogIndex       uint64     `json:"catalogIndex"`
	// ChecksIndex is the index of the last read of every check (pinpoint.go).
	ChecksIndex uint64 `json:"checksIndex"`
	// Watch is how changes are found: "services" (a watch per service),
	// "catalog" (the catalog-wide watches), "" before the first listing;
	// ServiceWatches counts the per-service watches, HTTP2 whether Consul
	// answers over HTTP/2.
	Watch          string `json:"watch"`
	ServiceWatches int    `json:"serviceWatches"`
	HTTP2          bool   `json:"http2"`
	// Panics the registry recovered from, and the last one's message.
	Panics    int    `json:"panics"`
	LastPanic string `json:"lastPanic,omitempty"`
}

type countsView struct {
	Services     int    `json:"services"`
	Endpoints    int    `json:"endpoints"`
	VIPsUsed     int    `json:"vipsUsed"`
	VIPRange     string `json:"vipRange"`
	VIPCapacity  uint64 `json:"vipCapacity"`
	PendingReads int    `json:"pendingReads"`
}

type sharedView struct {
	Hostname string `json:"hostname"`
	VIP      string `json:"vip"`
}

type serviceView struct {
	Name     string `json:"name"`
	Hostname string `json:"hostname"`
	VIP      string `json:"vip"`
	// Shared is the service under the hostname every datacenter serves
	// (--consulDatacenterFailover).
	Shared             *sharedView        `json:"shared,omitempty"`
	HiddenByKubernetes bool               `json:"hiddenByKubernetes,omitempty"`
	Ports              []portView         `json:"ports"`
	Instances          []instanceView     `json:"instances"`
	Skipped            []skipped          `json:"skipped,omitempty"`
	ProtocolConflicts  []protocolConflict `json:"protocolConflicts,omitempty"`
	ReadIndex          uint64             `json:"readIndex"`
	ReadAt             time.Time          `json:"readAt"`
	// ReadError is why the last read failed while Consul answered others
	// (ACLs hide its nodes); what is shown is the last good read.
	ReadError string `json:"readError,omitempty"`
}

type portView struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

type instanceView struct {
	ID      string `json:"id"`
	Node    string `json:"node"`
	Address string `json:"address"`
	Port    int    `json:"port"`
	// ServicePort is the service port it is reached on (meta "service-port"
	// or --consulDefaultServicePort): Port's own when they are the same.
	ServicePort int               `json:"servicePort"`
	Status      string            `json:"status"` // Consul's aggregated check status
	Routed      bool              `json:"routed"` // sent to istiod
	Weight      uint32            `json:"weight"`
	Labels      map[string]string `json:"labels,omitempty"`
}

type notServedView struct {
	Name      string    `json:"name"`
	Reason    string    `json:"reason"`
	Skipped   []skipped `json:"skipped,omitempty"`
	ReadIndex uint64    `json:"readIndex"`
	ReadAt    time.Time `json:"readAt"`
}

// DebugHandler serves /debug/consulz for istiod's Consul registries; other
// registries in the list are ignored. ?service=NAME (a Consul name or a
// hostname) narrows every registry's view to that service.
func DebugHandler(registries []serviceregistry.Instance) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		view := debugView{Registries: []registryView{}}
		for _, reg := range registries {
			if c, ok := reg.(*Controller); ok {
				view.Registries = append(view.Registries, c.debugView(r.URL.Query().Get("service")))
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(view)
	}
}

// debugView describes the registry; service, if set, narrows it to one service.
func (c *Controller) debugView(service string) registryView {
	st := c.status.view()
	v := registryView{
		Cluster: string(c.opts.ClusterID),
		Consul: consulView{
			Address:        c.args.ServerURL,
			Datacenter:     c.args.Datacenter,
			Reachable:      st.reachable,
			CatalogIndex:   c.catalog.lastIndex(),
			ChecksIndex:    c.pinpoint.lastIndex(),
			Watch:          c.detectorName(),
			ServiceWatches: c.services.count(),
			HTTP2:          c.consul.transport.http2.Load(),
			Panics:         st.panics,
			LastPanic:      st.lastPanic,
		},
		Synced:             c.HasSynced(),
		Services:           []serviceView{},
		NotServed:          []notServedView{},
		HiddenByKubernetes: []string{},
	}
	if !st.lastSuccess.IsZero() {
		t := st.lastSuccess.UTC()
		v.Consul.LastSuccessfulRead = &t
	}
	if st.lastErr != nil {
		v.Consul.LastError = st.lastErr.Error()
	}
	v.Counts.Services, v.Counts.Endpoints, v.Counts.VIPsUsed = c.store.counts()
	v.Counts.VIPRange, v.Counts.VIPCapacity = c.args.Mapping.VIPRange, c.opts.vips.capacity()
	v.Counts.PendingReads = c.dirty.len()

	records := c.store.records()
	for _, s := range c.store.list() {
		if service != "" && service != s.name && service != string(s.service.Hostname) &&
			(s.shared == nil || service != string(s.shared.Hostname)) {
			continue
		}
		sv := serviceView{
			Name:               s.name,
			Hostname:           string(s.service.Hostname),
			VIP:                s.service.DefaultAddress,
			HiddenByKubernetes: c.opts.KubernetesHas(s.service.Hostname),
			Ports:              []portView{},
			Instances:          []instanceView{},
		}
		if s.shared != nil {
			sv.Shared = &sharedView{Hostname: string(s.shared.Hostname), VIP: s.shared.DefaultAddress}
		}
		if sv.HiddenByKubernetes {
			v.HiddenByKubernetes = append(v.HiddenByKubernetes, sv.Hostname)
		}
		for _, p := range s.service.Ports {
			sv.Ports = append(sv.Ports, portView{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol)})
		}
		for _, i := range s.instances {
			sv.Instances = append(sv.Instances, instanceView{ID: i.id, Node: i.node, Address: i.address, Port: i.port,
				ServicePort: i.servicePort, Status: i.status, Routed: i.routed, Weight: i.weight, Labels: i.labels})
		}
		rec := records[s.name]
		sv.Skipped, sv.ProtocolConflicts, sv.ReadIndex, sv.ReadAt = rec.skipped, rec.conflicts, rec.index, rec.at
		sv.ReadError = rec.err
		v.Services = append(v.Services, sv)
	}
	for _, name := range sortedKeys(records) {
		rec := records[name]
		reason := rec.notServed
		if reason == "" && rec.err != "" && c.store.get(name) == nil {
			reason = "its read is refused: " + rec.err
		}
		if reason == "" || (service != "" && service != name && service != string(c.conv.hostname(name))) {
			continue
		}
		v.NotServed = append(v.NotServed, notServedView{Name: name, Reason: reason, Skipped: rec.skipped,
			ReadIndex: rec.index, ReadAt: rec.at})
	}
	sort.Strings(v.HiddenByKubernetes)
	return v
}
