package consul

// vip.go owns VIP allocation; the store holds the table.

import (
	"hash/fnv"
	"maps"
	"math/big"
	"net/netip"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/util/validation"

	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
)

// vipPool is the one VIP table of the registries an istiod (or consul-mcp)
// runs: a table per registry gave two datacenters' or Consul clusters'
// services the same address from the shared range, and a hostname that
// several registries serve (a service in two Consul clusters,
// --consulDatacenterFailover) could get a different VIP in each. The table
// is built over every member's hostnames, so it is still a function of what
// the catalogs list, the same on every replica.
type vipPool struct {
	mu    sync.RWMutex
	table *vipTable
	hosts map[cluster.ID][]host.Name
	// moved are the members' re-checks: a hostname another member listed
	// can move a VIP this member serves.
	moved map[cluster.ID]func()
}

func newVIPPool(cidr string) *vipPool {
	return &vipPool{table: newVIPTable(cidr), hosts: map[cluster.ID][]host.Name{}, moved: map[cluster.ID]func(){}}
}

// join adds a member; moved is called when another member's hostnames
// moved a VIP (the member then re-reads what it serves at a moved VIP).
func (p *vipPool) join(id cluster.ID, moved func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.moved[id] = moved
}

// assign makes hosts member id's hostnames and rebuilds the table over
// every member's. The other members are told when a VIP moved; id itself
// looks for its own moves when assign returns.
func (p *vipPool) assign(id cluster.ID, hosts []host.Name) {
	p.mu.Lock()
	p.hosts[id] = slices.Clone(hosts)
	before := p.table.byHost
	var all []host.Name
	for _, hs := range p.hosts {
		all = append(all, hs...)
	}
	p.table.assign(all)
	changed := !maps.Equal(before, p.table.byHost)
	var others []func()
	if changed {
		for m, f := range p.moved {
			if m != id {
				others = append(others, f)
			}
		}
	}
	p.mu.Unlock()
	for _, f := range others {
		f()
	}
}

// lookup returns h's VIP; "" when it has none.
func (p *vipPool) lookup(h host.Name) string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.table.lookup(h)
}

// used counts member id's hostnames that hold a VIP.
func (p *vipPool) used(id cluster.ID) int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := 0
	for _, h := range p.hosts[id] { // distinct: one per listed name (and its shared one)
		if _, ok := p.table.byHost[h]; ok {
			n++
		}
	}
	return n
}

func (p *vipPool) capacity() uint64 { return p.table.capacity() }

// vipTable gives every listed Consul service a virtual IP from a range, so
// TCP and other non-HTTP services get an outbound listener of their own.
//
// The table is a function of the set of hostnames alone. Every replica of
// istiod, and every restart, reads the same listing and so hands out the
// same VIPs: a client that resolved X to v and reconnects to another
// replica still reaches X at v. (Allocating as reads completed gave a
// colliding address to whichever service 16 workers happened to read
// first.) Each hostname's first choice is a hash of it; hostnames take
// their places in sorted order, and one whose choice is taken probes to
// the next free address, as Istio's own auto-allocation did (in creation
// order). Adding a hostname can move only hostnames after it in that order
// whose probe crosses its address; removing one can move them back.
type vipTable struct {
	prefix netip.Prefix
	size   uint64
	byHost map[host.Name]netip.Addr
	// exhausted counts hostnames the range had no room for.
	exhausted int
}

func newVIPTable(cidr string) *vipTable {
	p := netip.MustParsePrefix(cidr).Masked()
	bits := p.Addr().BitLen() - p.Bits()
	size := uint64(1) << min(bits, 62)
	return &vipTable{prefix: p, size: size, byHost: map[host.Name]netip.Addr{}}
}

// assign rebuilds the table for hosts.
func (v *vipTable) assign(hosts []host.Name) {
	hosts = slices.Clone(hosts)
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	v.byHost = make(map[host.Name]netip.Addr, len(hosts))
	taken := make(map[uint64]bool, len(hosts))
	before := v.exhausted
	v.exhausted = 0
	free := v.capacity()
	for _, h := range hosts {
		if free == 0 {
			v.exhausted++
			continue
		}
		f := fnv.New64a()
		_, _ = f.Write([]byte(h))
		for off := f.Sum64() % v.size; ; off = (off + 1) % v.size {
			if off == 0 || off == v.size-1 || taken[off] {
				continue // network and broadcast addresses, or taken
			}
			taken[off] = true
			v.byHost[h] = addOffset(v.prefix.Addr(), off)
			free--
			break
		}
	}
	if v.exhausted > 0 && v.exhausted != before {
		log.Errorf("consul VIP range %s is exhausted: %d services get no VIP (widen --consulVIPRange)", v.prefix, v.exhausted)
	}
}

// lookup returns h's VIP; "" when it has none (not listed, or no room).
func (v *vipTable) lookup(h host.Name) string {
	if a, ok := v.byHost[h]; ok {
		return a.String()
	}
	return ""
}

// capacity is how many VIPs the range holds.
func (v *vipTable) capacity() uint64 {
	if v.size < 3 {
		return 0
	}
	return v.size - 2
}

func addOffset(a netip.Addr, off uint64) netip.Addr {
	n := new(big.Int).SetBytes(a.AsSlice())
	n.Add(n, new(big.Int).SetUint64(off))
	b := n.FillBytes(make([]byte, len(a.AsSlice())))
	out, _ := netip.AddrFromSlice(b)
	return out
}

// hostnames are the hostnames of listed Consul names that can be served
// (a name that is no DNS label never is), with the hostname every
// datacenter shares when this registry serves that one too.
func (c *Controller) hostnames(names []string) []host.Name {
	out := make([]host.Name, 0, len(names))
	for _, n := range names {
		if len(validation.IsDNS1123Label(n)) == 0 {
			out = append(out, c.conv.hostname(n))
			if c.conv.failover {
				out = append(out, c.conv.sharedHostname(n))
			}
		}
	}
	return out
}
