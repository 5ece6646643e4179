package consul

// vip.go owns VIP allocation; the store holds the allocator.

import (
	"hash/fnv"
	"math/big"
	"net/netip"

	"istio.io/istio/pkg/config/host"
)

// vipAllocator gives each Consul service a stable virtual IP from a range, so
// TCP and other non-HTTP services get an outbound listener of their own. The
// first choice is a hash of the hostname, so a service keeps its VIP across
// istiod restarts; a collision probes to the next free address.
type vipAllocator struct {
	prefix netip.Prefix
	size   uint64
	byHost map[host.Name]netip.Addr
	byAddr map[netip.Addr]host.Name
}

func newVIPAllocator(cidr string) *vipAllocator {
	p := netip.MustParsePrefix(cidr).Masked()
	bits := p.Addr().BitLen() - p.Bits()
	size := uint64(1) << min(bits, 62)
	return &vipAllocator{prefix: p, size: size, byHost: map[host.Name]netip.Addr{}, byAddr: map[netip.Addr]host.Name{}}
}

// allocate returns h's VIP, allocating one if needed; "" when the range is full.
func (v *vipAllocator) allocate(h host.Name) string {
	if a, ok := v.byHost[h]; ok {
		return a.String()
	}
	f := fnv.New64a()
	_, _ = f.Write([]byte(h))
	start := f.Sum64() % v.size
	for i := uint64(0); i < v.size; i++ {
		off := (start + i) % v.size
		if off == 0 || off == v.size-1 {
			continue // network and broadcast addresses
		}
		a := addOffset(v.prefix.Addr(), off)
		if _, taken := v.byAddr[a]; !taken {
			v.byHost[h], v.byAddr[a] = a, h
			return a.String()
		}
	}
	log.Errorf("consul VIP range %s is exhausted; %s gets no VIP", v.prefix, h)
	return ""
}

// capacity is how many VIPs the range holds.
func (v *vipAllocator) capacity() uint64 {
	if v.size < 3 {
		return 0
	}
	return v.size - 2
}

func (v *vipAllocator) release(h host.Name) {
	if a, ok := v.byHost[h]; ok {
		delete(v.byHost, h)
		delete(v.byAddr, a)
	}
}

func addOffset(a netip.Addr, off uint64) netip.Addr {
	n := new(big.Int).SetBytes(a.AsSlice())
	n.Add(n, new(big.Int).SetUint64(off))
	b := n.FillBytes(make([]byte, len(a.AsSlice())))
	out, _ := netip.AddrFromSlice(b)
	return out
}
