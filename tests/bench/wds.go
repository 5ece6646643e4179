package bench

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// WatchWDS follows istiod's workload discovery as ztunnel does (one
// wildcard delta stream of istio.workload.Address) and reports, as watcher
// id, each service's healthy workload addresses to the tracker whenever
// they change.
func WatchWDS(env harness.Env, xdsAddr string, id int, data Dataset, t *Tracker) (*harness.WDSClient, error) {
	clusters := map[string]string{} // hostname -> the dataset's cluster name
	for i := range data.N {
		clusters[data.Host(i)] = data.Cluster(i)
	}
	var mu sync.Mutex
	serves := map[string][][2]string{}    // resource name -> (cluster, ip:port) it contributes
	addrs := map[string]map[string]bool{} // cluster -> ip:port
	onApply := func(name string, a *workloadapi.Address) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		touched := map[string]bool{}
		for _, ca := range serves[name] {
			delete(addrs[ca[0]], ca[1])
			touched[ca[0]] = true
		}
		delete(serves, name)
		if w := a.GetWorkload(); w != nil && w.Status == workloadapi.WorkloadStatus_HEALTHY && len(w.Addresses) > 0 {
			ip, _ := netip.AddrFromSlice(w.Addresses[0])
			for key, ports := range w.Services {
				_, host, _ := strings.Cut(key, "/")
				cluster, ok := clusters[host]
				if !ok || len(ports.GetPorts()) == 0 {
					continue
				}
				p := ports.GetPorts()[0]
				port := p.TargetPort
				if port == 0 {
					port = p.ServicePort
				}
				addr := net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
				if addrs[cluster] == nil {
					addrs[cluster] = map[string]bool{}
				}
				addrs[cluster][addr] = true
				serves[name] = append(serves[name], [2]string{cluster, addr})
				touched[cluster] = true
			}
		}
		for c := range touched {
			cp := make(map[string]bool, len(addrs[c]))
			for k := range addrs[c] {
				cp[k] = true
			}
			t.observeAddrs(id, c, cp, now)
		}
	}
	return harness.StartWDSClient(env, xdsAddr, onApply)
}
