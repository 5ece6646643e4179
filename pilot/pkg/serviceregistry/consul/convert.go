package consul

// convert.go owns the mapping from one Consul service's registrations to
// Istio's model (docs/mapping.md): pure, so every row is testable.

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"k8s.io/apimachinery/pkg/util/validation"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/config/protocol"
	"istio.io/istio/pkg/spiffe"
)

// Meta keys (Consul ServiceMeta, or NodeMeta where noted) the mapping reads.
// Consul meta keys may only hold [A-Za-z0-9_-], hence no Kubernetes-style names.
const (
	MetaProtocol       = "protocol"        // port protocol (Istio 1.7-compatible)
	MetaZone           = "zone"            // locality zone; ServiceMeta, else NodeMeta
	MetaSubzone        = "subzone"         // locality subzone; ServiceMeta, else NodeMeta
	MetaServiceAccount = "service-account" // workload identity: a name or a spiffe:// URI
	MetaTLSMode        = "tls-mode"        // "istio" when the instance runs an Istio sidecar
	// MetaServicePort is the service port clients reach the instance on,
	// which then serves it on its own registered port (Nomad's dynamic
	// ports: every allocation on a port of its own, one service port).
	MetaServicePort = "service-port"
	// MetaWorkload names the workload an instance belongs to (a Nomad job,
	// a VM group) in Istio's telemetry; the Consul service name by default.
	MetaWorkload = "workload"
)

// converter maps one Consul service's registrations to Istio's model. It is
// pure: same input, same output, so the mapping table in docs/mapping.md is testable.
type converter struct {
	domain   string
	remoteDC string // set for a non-local datacenter: part of hostnames
	// failover also serves a non-local datacenter's services under the
	// hostnames of the local one (--consulDatacenterFailover).
	failover        bool
	entNamespace    string
	partition       string
	namespace       string
	clusterID       cluster.ID
	includeWarning  bool
	sendUnhealthy   bool
	defaultProtocol protocol.Instance
	defaultSA       string
	servicePort     int // --consulDefaultServicePort; 0: each registered port
	trustDomain     func() string
}

// conversion is the result for one Consul service.
type conversion struct {
	// service is nil when the service is not served (see notServed).
	service *model.Service
	// shared is service under the hostname every datacenter serves
	// (converter.failover); nil otherwise.
	shared *model.Service
	// endpoints are the instances that get traffic (or UNHEALTHY ones if asked).
	endpoints []*model.IstioEndpoint
	// routed is the instance of each endpoint, at the same index.
	routed []*instance
	// instances are all valid registrations, routable or not, for proxy lookups.
	instances []*instance
	// skipped are the registrations left out, each with why.
	skipped []skipped
	// notServed says why the service as a whole is not served; "" when it is.
	notServed string
	// badInput: notServed because of invalid input (logged as a warning),
	// not by design (no workload among the registrations) or because the
	// service just left.
	badInput bool
	// conflicts are ports whose registrations declare different protocols.
	conflicts []protocolConflict
}

// skipped is one registration left out of a service.
type skipped struct {
	Instance string `json:"instance"`
	Node     string `json:"node"`
	Reason   string `json:"reason"`
	// kind names the reason in a metric label (pilot_consul_skipped_instances).
	kind string
	// byDesign: not a workload (a Connect proxy, a gateway), not bad input.
	byDesign bool
}

// protocolConflict is a port whose registrations disagree on its protocol.
type protocolConflict struct {
	Port     int               `json:"port"`
	Declared string            `json:"declared"` // e.g. "grpc×1, http×2"
	Chosen   protocol.Instance `json:"chosen"`
}

// warnings are the log lines for bad input, naming each entry and why.
func (c *conversion) warnings(name string) []string {
	var out []string
	for _, s := range c.skipped {
		if s.byDesign {
			continue
		}
		if s.Instance == "" && s.Node == "" {
			out = append(out, fmt.Sprintf("consul service %q: skipped an entry: %s", name, s.Reason))
		} else {
			out = append(out, fmt.Sprintf("consul service %q instance %q on node %q skipped: %s", name, s.Instance, s.Node, s.Reason))
		}
	}
	for _, p := range c.conflicts {
		out = append(out, fmt.Sprintf("consul service %q: registrations declare different protocols on port %d (%s); using %s",
			name, p.Port, p.Declared, p.Chosen))
	}
	if c.badInput {
		out = append(out, fmt.Sprintf("consul service %q is not served: %s", name, c.notServed))
	}
	return out
}

// byDesign: the service is not served only because none of its
// registrations is a workload (Connect's <name>-sidecar-proxy, gateways).
func (c *conversion) byDesign() bool {
	if len(c.skipped) == 0 {
		return false
	}
	for _, s := range c.skipped {
		if !s.byDesign {
			return false
		}
	}
	return true
}

// instance is one valid Consul registration of a service.
type instance struct {
	id, node string
	address  string
	port     int // where it listens (its registration's port)
	// servicePort is the service port it is an endpoint of: meta
	// "service-port", else --consulDefaultServicePort, else port.
	servicePort int
	labels      labels.Instance
	status      string // Consul's aggregated check status
	weight      uint32
	routed      bool // sent to istiod (healthy, or UNHEALTHY with --consulSendUnhealthy)
}

// hostname follows Consul DNS: <service>.service[.<ns>.ns][.<partition>.ap]
// [.<dc>[.dc]].<domain>; the datacenter only for non-local datacenters, with
// the ".dc" label when a namespace or partition is present (as Consul does).
func (c *converter) hostname(name string) host.Name { return c.hostnameIn(name, c.remoteDC) }

// sharedHostname is name's hostname in the local datacenter, the one a
// non-local datacenter's instances are served under with failover.
func (c *converter) sharedHostname(name string) host.Name { return c.hostnameIn(name, "") }

func (c *converter) hostnameIn(name, remoteDC string) host.Name {
	h := name + ".service"
	if c.entNamespace != "" {
		h += "." + c.entNamespace + ".ns"
	}
	if c.partition != "" {
		h += "." + c.partition + ".ap"
	}
	if remoteDC != "" {
		h += "." + remoteDC
		if c.entNamespace != "" || c.partition != "" {
			h += ".dc"
		}
	}
	return host.Name(h + "." + c.domain)
}

func (c *converter) convert(name string, entries []*api.ServiceEntry) conversion {
	var out conversion
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		out.notServed, out.badInput = fmt.Sprintf("name is not a DNS label (%s)", strings.Join(errs, "; ")), true
		return out
	}
	if len(entries) == 0 {
		// Listed, but its last instance left before the read: gone.
		out.notServed = "no registrations"
		return out
	}
	type candidate struct {
		entry    *api.ServiceEntry
		inst     *instance
		protocol protocol.Instance
	}
	var cands []candidate
	// port -> protocol -> number of registrations declaring it
	portProtocols := map[int]map[protocol.Instance]int{}
	kinds := map[api.ServiceKind]int{}
	var labelSets []labels.Instance
	for _, e := range entries {
		inst, proto, skip := c.instanceOf(name, e)
		if inst == nil {
			if skip.byDesign {
				kinds[e.Service.Kind]++
			}
			out.skipped = append(out.skipped, skip)
			continue
		}
		inst.labels = shareLabels(&labelSets, inst.labels)
		if portProtocols[inst.servicePort] == nil {
			portProtocols[inst.servicePort] = map[protocol.Instance]int{}
		}
		portProtocols[inst.servicePort][proto]++
		inst.status = e.Checks.AggregatedStatus()
		cands = append(cands, candidate{entry: e, inst: inst, protocol: proto})
	}

	// A service with registrations but no workload among them would be an
	// Istio service without ports or endpoints, holding a VIP: Connect's
	// <name>-sidecar-proxy beside every service, gateways, or bad input only.
	if len(cands) == 0 {
		if out.byDesign() {
			out.notServed = fmt.Sprintf("none of its %d registrations is a workload (kinds: %v)", len(entries), kindCounts(kinds))
		} else {
			out.notServed, out.badInput = fmt.Sprintf("none of its %d registrations is valid", len(entries)), true
		}
		return out
	}

	svc := &model.Service{
		Hostname:   c.hostname(name),
		Resolution: model.ClientSideLB,
		Attributes: model.ServiceAttributes{
			ServiceRegistry: Provider,
			Name:            name,
			Namespace:       c.namespace,
		},
	}
	portNames := map[int]string{}
	for _, port := range sortedKeys(portProtocols) {
		proto := pickProtocol(portProtocols[port])
		if len(portProtocols[port]) > 1 {
			out.conflicts = append(out.conflicts, protocolConflict{Port: port, Declared: protocolCounts(portProtocols[port]), Chosen: proto})
		}
		portNames[port] = strings.ToLower(string(proto)) + "-" + fmt.Sprint(port)
		svc.Ports = append(svc.Ports, &model.Port{Name: portNames[port], Port: port, Protocol: proto})
	}

	sas := map[string]struct{}{}
	for _, cd := range cands {
		out.instances = append(out.instances, cd.inst)
		ep := c.endpoint(name, cd.entry, cd.inst, portNames[cd.inst.servicePort])
		if ep == nil {
			continue
		}
		if ep.ServiceAccount != "" {
			sas[ep.ServiceAccount] = struct{}{}
		}
		out.endpoints = append(out.endpoints, ep)
		out.routed = append(out.routed, cd.inst)
	}
	for sa := range sas {
		svc.ServiceAccounts = append(svc.ServiceAccounts, sa)
	}
	sort.Strings(svc.ServiceAccounts)
	out.service = svc
	if c.failover {
		out.shared = svc.DeepCopy()
		out.shared.Hostname = c.sharedHostname(name)
	}
	return out
}

// instanceOf validates one registration: an instance, or why it is skipped.
func (c *converter) instanceOf(name string, e *api.ServiceEntry) (*instance, protocol.Instance, skipped) {
	if e == nil || e.Service == nil || e.Node == nil {
		return nil, "", skipped{Reason: "no service or node data", kind: "no_data"}
	}
	s := e.Service
	skip := skipped{Instance: s.ID, Node: e.Node.Node}
	if s.Kind != api.ServiceKindTypical {
		skip.Reason, skip.kind, skip.byDesign = fmt.Sprintf("kind %s is not a workload", s.Kind), "not_a_workload", true
		return nil, "", skip
	}
	addr := s.Address
	if addr == "" {
		addr = e.Node.Address
	}
	ip, err := netip.ParseAddr(addr)
	switch {
	case addr == "":
		skip.Reason, skip.kind = "neither the service nor its node has an address", "no_address"
	case err != nil || ip.IsUnspecified():
		skip.Reason = fmt.Sprintf("address %q is not an IP address (Consul hostnames are not resolved; register an IP)", addr)
		skip.kind = "hostname_address"
	case ip.Zone() != "":
		skip.Reason, skip.kind = fmt.Sprintf("address %q is scoped to a network interface", addr), "scoped_address"
	case s.Port < 1 || s.Port > 65535:
		skip.Reason, skip.kind = fmt.Sprintf("port %d is out of range 1-65535", s.Port), "port_out_of_range"
	default:
		servicePort, err := c.servicePortOf(s)
		if err != nil {
			skip.Reason, skip.kind = err.Error(), "bad_service_port"
			return nil, "", skip
		}
		return &instance{id: s.ID, node: e.Node.Node, address: ip.Unmap().String(), port: s.Port, servicePort: servicePort,
			labels: instanceLabels(s)}, c.protocolOf(name, s.Meta[MetaProtocol]), skipped{}
	}
	return nil, "", skip
}

// servicePortOf is the service port a registration is an endpoint of: meta
// "service-port", else --consulDefaultServicePort, else its own port.
func (c *converter) servicePortOf(s *api.AgentService) (int, error) {
	v, ok := s.Meta[MetaServicePort]
	if !ok {
		if c.servicePort > 0 {
			return c.servicePort, nil
		}
		return s.Port, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("meta %q = %q is not a port 1-65535", MetaServicePort, v)
	}
	return p, nil
}

// protocolOf: ServiceMeta "protocol", else a protocol prefix of the service
// name (Kubernetes port-naming convention: grpc-payments), else the default.
func (c *converter) protocolOf(name, meta string) protocol.Instance {
	if p := protocol.Parse(meta); meta != "" && p != protocol.Unsupported {
		return p
	}
	if prefix, _, ok := strings.Cut(name, "-"); ok {
		if p := protocol.Parse(prefix); p != protocol.Unsupported {
			return p
		}
	}
	return c.defaultProtocol
}

// endpoint is inst's endpoint, or nil when its health keeps it out; it
// records the instance's weight and whether it is routed.
func (c *converter) endpoint(name string, e *api.ServiceEntry, inst *instance, portName string) *model.IstioEndpoint {
	health := model.Healthy
	weight := e.Service.Weights.Passing
	switch inst.status {
	case api.HealthPassing:
	case api.HealthWarning:
		weight = e.Service.Weights.Warning
		// Consul DNS leaves out warning instances of weight 0; so do we.
		if !c.includeWarning || weight == 0 {
			health = model.UnHealthy
		}
	default: // critical, maintenance
		health = model.UnHealthy
	}
	inst.weight = uint32(max(weight, 1))
	if health == model.UnHealthy && !c.sendUnhealthy {
		return nil
	}
	inst.routed = true
	tlsMode := model.DisabledTLSModeLabel
	if strings.EqualFold(e.Service.Meta[MetaTLSMode], model.IstioMutualTLSModeLabel) {
		tlsMode = model.IstioMutualTLSModeLabel
	}
	return &model.IstioEndpoint{
		Addresses:              []string{inst.address},
		EndpointPort:           uint32(inst.port),
		ServicePortName:        portName,
		LegacyClusterPortKey:   inst.servicePort,
		Labels:                 inst.labels,
		ServiceAccount:         c.serviceAccount(e.Service.Meta[MetaServiceAccount]),
		Locality:               model.Locality{Label: locality(e), ClusterID: c.clusterID},
		LbWeight:               inst.weight,
		TLSMode:                tlsMode,
		Namespace:              c.namespace,
		WorkloadName:           workloadName(name, e.Service.Meta),
		NodeName:               e.Node.Node,
		HealthStatus:           health,
		SendUnhealthyEndpoints: c.sendUnhealthy,
		DiscoverabilityPolicy:  model.AlwaysDiscoverable,
	}
}

// workloadName is what Istio's telemetry calls the instance's workload
// (destination_workload, and destination_canonical_service without an app
// label): like a Kubernetes Deployment's name, shared by its instances. A
// per-instance name (Consul's service ID, a new one for every Nomad
// allocation) would make every instance its own metric series in every
// sidecar.
func workloadName(service string, meta map[string]string) string {
	if w := meta[MetaWorkload]; w != "" {
		return w
	}
	return service
}

func (c *converter) serviceAccount(meta string) string {
	sa := meta
	if sa == "" {
		sa = c.defaultSA
	}
	switch {
	case sa == "":
		return ""
	case strings.HasPrefix(sa, spiffe.URIPrefix):
		return sa
	default:
		return spiffe.MustGenSpiffeURIForTrustDomain(c.trustDomain(), c.namespace, sa)
	}
}

// locality is region/zone/subzone: the datacenter, then meta zone and subzone.
func locality(e *api.ServiceEntry) string {
	meta := func(k string) string {
		if v := e.Service.Meta[k]; v != "" {
			return v
		}
		return e.Node.Meta[k]
	}
	region := e.Node.Datacenter
	zone, subzone := meta(MetaZone), meta(MetaSubzone)
	switch {
	case subzone != "":
		return region + "/" + zone + "/" + subzone
	case zone != "":
		return region + "/" + zone
	default:
		return region
	}
}

// instanceLabels: tags "key=value" and the Istio 1.7 form "key|value", then
// ServiceMeta entries (which win on conflict). Keys or values Kubernetes would
// reject are dropped, since DestinationRule subsets could never select them.
func instanceLabels(s *api.AgentService) labels.Instance {
	out := labels.Instance{}
	add := func(k, v string) {
		if len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
			log.Debugf("consul instance %q: label %q=%q dropped: not a valid Kubernetes label", s.ID, k, v)
			return
		}
		out[k] = v
	}
	for _, tag := range s.Tags {
		if k, v, ok := strings.Cut(tag, "="); ok {
			add(k, v)
		} else if k, v, ok := strings.Cut(tag, "|"); ok {
			add(k, v)
		}
	}
	for _, k := range sortedKeys(s.Meta) {
		add(k, s.Meta[k])
	}
	return out
}

// sharedLabelSets bounds the distinct label sets one service's instances
// share: past it, each further set is kept apart, so that a service whose
// every instance is labelled differently costs a few comparisons each, not
// one per instance before it.
const sharedLabelSets = 8

// shareLabels returns a map equal to l that an instance of the same service
// already holds, or l. Instances of a service mostly carry the same tags
// and metadata, and a map each is most of what an instance costs istiod
// to hold. The maps are never written once built (Istio copies what it
// augments), so sharing one is safe.
func shareLabels(sets *[]labels.Instance, l labels.Instance) labels.Instance {
	for _, s := range *sets {
		if maps.Equal(s, l) {
			return s
		}
	}
	if len(*sets) < sharedLabelSets {
		*sets = append(*sets, l)
	}
	return l
}

// pickProtocol is deterministic: most registrations win, ties go to the
// alphabetically first protocol.
func pickProtocol(counts map[protocol.Instance]int) protocol.Instance {
	var best protocol.Instance
	for _, p := range sortedKeys(counts) {
		if best == "" || counts[p] > counts[best] {
			best = p
		}
	}
	return best
}

func protocolCounts(counts map[protocol.Instance]int) string {
	parts := make([]string, 0, len(counts))
	for _, p := range sortedKeys(counts) {
		parts = append(parts, fmt.Sprintf("%s×%d", p, counts[p]))
	}
	return strings.Join(parts, ", ")
}

func kindCounts(kinds map[api.ServiceKind]int) string {
	var parts []string
	for _, k := range sortedKeys(kinds) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, kinds[k]))
	}
	return strings.Join(parts, ", ")
}

func sortedKeys[K interface{ ~int | ~string }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
