package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"istio.io/istio/pkg/workloadapi"
)

// AddressType is the WDS resource type ztunnel subscribes to.
const AddressType = "type.googleapis.com/istio.workload.Address"

// WDSClient subscribes to istiod's workload discovery as ztunnel does: one
// delta xDS stream of istio.workload.Address, wildcard, ACKing every
// response. It keeps the current addresses by resource name.
type WDSClient struct {
	mu      sync.Mutex
	addrs   map[string]*workloadapi.Address
	err     error
	onApply func(name string, a *workloadapi.Address) // a is nil for a removal
	cancel  context.CancelFunc
	done    chan struct{}
}

// StartWDSClient connects to istiod's plaintext xDS address as a ztunnel
// of the release under test; it stops at the env's cleanup. onApply, if
// set, sees every resource as it arrives.
func StartWDSClient(env Env, xdsAddr string, onApply func(name string, a *workloadapi.Address)) (*WDSClient, error) {
	return StartWDSClientAs(env, xdsAddr, IstioRelease(), onApply)
}

// StartWDSClientAs is StartWDSClient for a ztunnel of istioVersion, where
// the release cannot be read from the repository (inside a cluster).
func StartWDSClientAs(env Env, xdsAddr, istioVersion string, onApply func(name string, a *workloadapi.Address)) (*WDSClient, error) {
	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("wds client: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		cc.Close()
		return nil, fmt.Errorf("wds stream: %w", err)
	}
	meta, _ := structpb.NewStruct(map[string]any{
		"NAMESPACE": "istio-system", "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": istioVersion,
	})
	node := &core.Node{Id: "ztunnel~127.0.0.252~ztunnel-test.istio-system~istio-system.svc.cluster.local", Metadata: meta}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: AddressType}); err != nil {
		cancel()
		cc.Close()
		return nil, fmt.Errorf("wds subscribe: %w", err)
	}
	c := &WDSClient{addrs: map[string]*workloadapi.Address{}, onApply: onApply, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer cc.Close()
		for {
			resp, err := stream.Recv()
			if err != nil {
				c.mu.Lock()
				if ctx.Err() == nil {
					c.err = fmt.Errorf("wds recv: %w", err)
				}
				c.mu.Unlock()
				return
			}
			if err := c.apply(resp); err != nil {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
			}
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
				return
			}
		}
	}()
	env.Cleanup(c.Close)
	return c, nil
}

func (c *WDSClient) apply(resp *discovery.DeltaDiscoveryResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range resp.Resources {
		a := &workloadapi.Address{}
		if err := r.Resource.UnmarshalTo(a); err != nil {
			return fmt.Errorf("decode %s: %w", r.Name, err)
		}
		c.addrs[r.Name] = a
		if c.onApply != nil {
			c.onApply(r.Name, a)
		}
	}
	for _, name := range resp.RemovedResources {
		delete(c.addrs, name)
		if c.onApply != nil {
			c.onApply(name, nil)
		}
	}
	return nil
}

// Service returns the service "namespace/hostname", or nil.
func (c *WDSClient) Service(namespace, hostname string) *workloadapi.Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a := c.addrs[namespace+"/"+hostname]; a != nil {
		return a.GetService()
	}
	return nil
}

// WorkloadsOf returns the workloads that serve "namespace/hostname".
func (c *WDSClient) WorkloadsOf(namespace, hostname string) []*workloadapi.Workload {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*workloadapi.Workload
	for _, a := range c.addrs {
		if w := a.GetWorkload(); w != nil {
			if _, ok := w.Services[namespace+"/"+hostname]; ok {
				out = append(out, w)
			}
		}
	}
	return out
}

// Err is the stream's error, if it failed.
func (c *WDSClient) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the stream.
func (c *WDSClient) Close() {
	c.cancel()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}

// WDSView is a service as a WDS client holds it, in plain values (what
// `e2e-echo wds` prints as JSON lines from inside a cluster).
type WDSView struct {
	Present   bool          `json:"present"`
	Addresses []string      `json:"addresses,omitempty"`
	Ports     []uint32      `json:"ports,omitempty"`
	Workloads []WDSWorkload `json:"workloads,omitempty"`
	// Received names the service's resources that arrived since the
	// previous view, a removal as "-name" (set by e2e-echo wds).
	Received []string `json:"received,omitempty"`
}

// WDSWorkload is one workload serving a WDSView's service.
type WDSWorkload struct {
	UID            string `json:"uid"`
	Address        string `json:"address"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	Tunnel         string `json:"tunnel"`
	Region         string `json:"region,omitempty"`
	Zone           string `json:"zone,omitempty"`
}

// View returns the service "namespace/hostname" and its workloads, sorted
// by address.
func (c *WDSClient) View(namespace, hostname string) WDSView {
	v := WDSView{}
	if svc := c.Service(namespace, hostname); svc != nil {
		v.Present = true
		for _, a := range svc.Addresses {
			ip, _ := netip.AddrFromSlice(a.Address)
			v.Addresses = append(v.Addresses, ip.String())
		}
		for _, p := range svc.Ports {
			v.Ports = append(v.Ports, p.ServicePort)
		}
	}
	for _, w := range c.WorkloadsOf(namespace, hostname) {
		var addr netip.Addr
		if len(w.Addresses) > 0 {
			addr, _ = netip.AddrFromSlice(w.Addresses[0])
		}
		v.Workloads = append(v.Workloads, WDSWorkload{UID: w.Uid, Address: addr.String(), ServiceAccount: w.ServiceAccount,
			Tunnel: w.TunnelProtocol.String(), Region: w.Locality.GetRegion(), Zone: w.Locality.GetZone()})
	}
	slices.SortFunc(v.Workloads, func(a, b WDSWorkload) int { return strings.Compare(a.Address, b.Address) })
	return v
}

// Ambientz is what istiod's /debug/ambientz lists of one service
// ("namespace/hostname"): whether the service is there, and the address of
// each workload serving it, sorted.
type Ambientz struct {
	Listed    bool
	Workloads []string
}

// ParseAmbientz reads a /debug/ambientz answer for one service.
func ParseAmbientz(b []byte, namespace, hostname string) (Ambientz, error) {
	var z struct {
		Workloads []struct {
			Addresses [][]byte            `json:"addresses"` // text, base64 in the JSON
			Services  map[string]struct{} `json:"services"`
		} `json:"workloads"`
		Services []struct {
			Namespace string `json:"namespace"`
			Hostname  string `json:"hostname"`
		} `json:"services"`
	}
	if err := json.Unmarshal(b, &z); err != nil {
		return Ambientz{}, fmt.Errorf("/debug/ambientz: %w", err)
	}
	var out Ambientz
	for _, w := range z.Workloads {
		if _, ok := w.Services[namespace+"/"+hostname]; ok && len(w.Addresses) == 1 {
			out.Workloads = append(out.Workloads, string(w.Addresses[0]))
		}
	}
	slices.Sort(out.Workloads)
	for _, s := range z.Services {
		out.Listed = out.Listed || s.Namespace == namespace && s.Hostname == hostname
	}
	return out, nil
}
