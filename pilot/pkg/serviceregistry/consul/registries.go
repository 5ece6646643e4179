package consul

// registries.go builds the registries istiod runs: one per Consul cluster
// and datacenter.

import (
	"fmt"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry"
	"istio.io/istio/pilot/pkg/serviceregistry/provider"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/mesh"
)

// registryLister is the part of istiod's aggregate controller the registry
// needs: the other registries, to let Kubernetes win on shared hostnames.
type registryLister interface {
	GetRegistries() []serviceregistry.Instance
}

// NewForIstiod builds the registries istiod runs from its flags: one per
// Consul endpoint and datacenter. It is the single call the bootstrap patch
// makes, so the patch stays a few lines of wiring.
func NewForIstiod(args *Args, xds model.XDSUpdater, meshHolder mesh.Holder, others registryLister) ([]serviceregistry.Instance, error) {
	if err := args.Complete(nil); err != nil {
		return nil, fmt.Errorf("consul registry flags: %w", err)
	}
	opts := Options{
		XDSUpdater: xds,
		TrustDomain: func() string {
			if m := meshHolder.Mesh(); m != nil && m.TrustDomain != "" {
				return m.TrustDomain
			}
			return defaultTrustDomain
		},
		KubernetesHas: func(h host.Name) bool {
			for _, r := range others.GetRegistries() {
				if r.Provider() == provider.Kubernetes && r.GetService(h) != nil {
					return true
				}
			}
			return false
		},
	}
	return NewRegistries(*args, opts)
}

// NewRegistries builds one registry per target of completed args; they
// share one VIP table (and, with failover, the shared hostnames' feed).
func NewRegistries(args Args, opts Options) ([]serviceregistry.Instance, error) {
	opts.vips = newVIPPool(args.Mapping.VIPRange)
	if args.DatacenterFailover {
		opts.shared = newSharedFeed(args.Mapping.Namespace, opts.InlineEndpoints)
	}
	var out []serviceregistry.Instance
	for _, t := range args.targets() {
		a := args
		a.ServerURL, a.Datacenter = t.url, t.datacenter
		o := opts
		o.ClusterID, o.RemoteDatacenter = t.clusterID, !t.local
		r, err := New(a, o)
		if err != nil {
			return nil, fmt.Errorf("consul registry %s: %w", t.clusterID, err)
		}
		out = append(out, r)
	}
	return out, nil
}
