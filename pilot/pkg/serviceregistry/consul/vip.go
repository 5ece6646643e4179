package consul

// vip.go owns VIP allocation; the store holds the table.

import (
	"hash/fnv"
	"math/big"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/util/validation"

	"istio.io/istio/pkg/config/host"
)

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
// (a name that is no DNS label never is).
func (c *Controller) hostnames(names []string) []host.Name {
	out := make([]host.Name, 0, len(names))
	for _, n := range names {
		if len(validation.IsDNS1123Label(n)) == 0 {
			out = append(out, c.conv.hostname(n))
		}
	}
	return out
}
