package consul

import (
	"strconv"
	"strings"

	"istio.io/istio/pkg/cluster"
)

// target is one registry to run: a Consul cluster's endpoint and one of its
// datacenters. Each has its own cluster ID and so its own endpoint shard: an
// outage of one never touches the endpoints of another.
type target struct {
	clusterID  cluster.ID
	url        string
	datacenter string // "" = the agent's own
	local      bool   // hostnames without the datacenter
}

// targets expands completed Args: every --consulServerURL entry × every
// --consulDatacenter entry. IDs: "consul" for the first endpoint, its name
// ("name=url") or "consul-<n>" for others; "-<dc>" for non-local datacenters.
func (a *Args) targets() []target {
	dcs := []string{""}
	if a.Datacenter != "" {
		dcs = dcs[:0]
		for _, dc := range strings.Split(a.Datacenter, ",") {
			if dc = strings.TrimSpace(dc); dc != "" {
				dcs = append(dcs, dc)
			}
		}
	}
	var out []target
	for i, u := range strings.Split(a.ServerURL, ",") {
		name, url := splitName(u)
		if name == "" {
			name = "consul"
			if i > 0 {
				name += "-" + strconv.Itoa(i+1)
			}
		}
		for j, dc := range dcs {
			id := name
			if j > 0 {
				id += "-" + dc
			}
			out = append(out, target{clusterID: cluster.ID(id), url: url, datacenter: dc, local: j == 0})
		}
	}
	return out
}
