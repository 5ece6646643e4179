package consul

import (
	"fmt"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry"
	"istio.io/istio/pilot/pkg/serviceregistry/provider"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/mesh"
)

// registryLister is the part of istiod's aggregate controller the registry
// needs: the other registries, to let Kubernetes win on shared hostnames.
type registryLister interface {
	GetRegistries() []serviceregistry.Instance
}

// NewForIstiod builds the registry from istiod's flags; it is the single call
// the bootstrap patch makes, so the patch stays one line of wiring.
func NewForIstiod(args *Args, xds model.XDSUpdater, meshHolder mesh.Holder, others registryLister) (*Controller, error) {
	if err := args.Complete(nil); err != nil {
		return nil, fmt.Errorf("consul registry flags: %w", err)
	}
	return New(*args, Options{
		ClusterID:  cluster.ID("consul"),
		XDSUpdater: xds,
		TrustDomain: func() string {
			if m := meshHolder.Mesh(); m != nil && m.TrustDomain != "" {
				return m.TrustDomain
			}
			return "cluster.local"
		},
		KubernetesHas: func(h host.Name) bool {
			for _, r := range others.GetRegistries() {
				if r.Provider() == provider.Kubernetes && r.GetService(h) != nil {
					return true
				}
			}
			return false
		},
	})
}
