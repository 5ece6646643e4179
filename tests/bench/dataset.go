// Package bench measures the patched istiod serving one catalog several
// ways, on the same data, machine and istiod binary: Route A is our Consul
// registry; Route K is the same catalog as Kubernetes Services and
// EndpointSlices, read by istiod's own Kubernetes registry (the reference);
// Route B is what ServiceEntry-writing bridges produce (one ServiceEntry per
// service, one WorkloadEntry per instance). K and B are read from a real
// kube-apiserver. tests/cmd/bench drives it (`make bench`).
package bench

import (
	"fmt"
	"net/netip"
)

// Port every benchmark service listens on. One shared HTTP port keeps the
// sidecar's listener count equal in both routes (one 0.0.0.0_8080 listener
// with a virtual host per service).
const Port = 8080

// Dataset is N services × M instances. Instance addresses come from
// 198.18.0.0/15 (the benchmarking range): they are data only, nothing dials
// them. Past the range's 131,070 addresses they repeat, in other services
// only (a service's own instances stay distinct).
type Dataset struct {
	N, M int
	// Domain follows the service name in its hostname: "service.consul"
	// when empty (Routes A and B); Route K's Services are named by
	// Kubernetes ("consul.svc.cluster.local").
	Domain string
}

// Instance identifies instance j of service i.
type Instance struct{ Svc, Idx int }

// Name of service i in Consul (and of its ServiceEntry).
func (d Dataset) Name(i int) string { return fmt.Sprintf("svc-%05d", i) }

// Host is the service's hostname in the mesh.
func (d Dataset) Host(i int) string {
	if d.Domain == "" {
		return d.Name(i) + ".service.consul"
	}
	return d.Name(i) + "." + d.Domain
}

// Cluster is the outbound cluster name istiod gives the service.
func (d Dataset) Cluster(i int) string { return fmt.Sprintf("outbound|%d||%s", Port, d.Host(i)) }

// ID is the instance's Consul service ID (and WorkloadEntry name).
func (d Dataset) ID(in Instance) string { return fmt.Sprintf("%s-%d", d.Name(in.Svc), in.Idx) }

// instancesPerNode is how many instances share a Consul node. Consul's
// writes slow down as one node holds more services (10 nodes holding
// 10,000 services each took minutes to load), and real hosts run a few.
const instancesPerNode = 100

// Node is the Consul node an instance runs on.
func (d Dataset) Node(in Instance) string { return nodeName((in.Svc*d.M + in.Idx) / instancesPerNode) }

func nodeName(k int) string { return fmt.Sprintf("bench-node-%d", k) }

// Nodes is how many nodes the dataset spreads over.
func (d Dataset) Nodes() int { return (d.N*d.M + instancesPerNode - 1) / instancesPerNode }

// IP of an instance.
func (d Dataset) IP(in Instance) string {
	base := netip.MustParseAddr("198.18.0.1").As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32((in.Svc*d.M + in.Idx) % addresses)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}).String()
}

// Addr is "ip:port", as it appears in an EDS endpoint.
func (d Dataset) Addr(in Instance) string { return fmt.Sprintf("%s:%d", d.IP(in), Port) }

// Zone is the instance's locality zone (Consul service meta "zone",
// EndpointSlice endpoint zone).
func (d Dataset) Zone(in Instance) string { return fmt.Sprintf("zone-%d", in.Idx%3) }

// Version is the instance's version label (tag "version=vX" in Consul).
func (d Dataset) Version(in Instance) string { return fmt.Sprintf("v%d", in.Idx%2+1) }

// Clusters lists every service's cluster name.
func (d Dataset) Clusters() []string {
	out := make([]string, d.N)
	for i := range out {
		out[i] = d.Cluster(i)
	}
	return out
}

// Listeners lists the listener names a proxyless gRPC client asks for ("host:port").
func (d Dataset) Listeners() []string {
	out := make([]string, d.N)
	for i := range out {
		out[i] = fmt.Sprintf("%s:%d", d.Host(i), Port)
	}
	return out
}

// addresses is how many instance addresses 198.18.0.1 onwards holds
// within 198.18.0.0/15.
const addresses = 1<<17 - 2

// Validate rejects sizes the address range cannot hold.
func (d Dataset) Validate() error {
	if d.N < 1 || d.M < 2 {
		return fmt.Errorf("dataset %d×%d: need at least 1 service and 2 instances each", d.N, d.M)
	}
	if d.M > addresses {
		return fmt.Errorf("dataset %d×%d: more instances per service than 198.18.0.0/15 holds", d.N, d.M)
	}
	if d.N > 99999 {
		return fmt.Errorf("dataset %d×%d: service names have five digits", d.N, d.M)
	}
	return nil
}
