package consul

// discovery.go answers istiod's questions (model.ServiceDiscovery and
// model.Controller) from the store. Kubernetes wins a shared hostname.

import (
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/labels"
)

// Services implements model.ServiceDiscovery.
func (c *Controller) Services() []*model.Service {
	all := c.store.list()
	out := make([]*model.Service, 0, len(all))
	for _, s := range all {
		for _, svc := range s.hosted() {
			if !c.opts.KubernetesHas(svc.Hostname) {
				out = append(out, svc)
			}
		}
	}
	return out
}

// GetService implements model.ServiceDiscovery.
func (c *Controller) GetService(h host.Name) *model.Service {
	s := c.store.byHostname(h)
	if s == nil || c.opts.KubernetesHas(h) {
		return nil
	}
	if s.shared != nil && s.shared.Hostname == h {
		return s.shared
	}
	return s.service
}

// GetProxyServiceTargets answers for sidecars running beside a Consul
// instance (e.g. on a VM), so they get inbound configuration.
func (c *Controller) GetProxyServiceTargets(p *model.Proxy) []model.ServiceTarget {
	var out []model.ServiceTarget
	for _, ip := range p.IPAddresses {
		for _, s := range c.store.atIP(ip) {
			for _, inst := range s.instances {
				if inst.address != ip {
					continue
				}
				for _, svc := range s.hosted() {
					for _, port := range svc.Ports {
						if port.Port == inst.servicePort {
							out = append(out, model.ServiceTarget{
								Service: svc,
								Port:    model.ServiceInstancePort{ServicePort: port, TargetPort: uint32(inst.port)},
							})
						}
					}
				}
			}
		}
	}
	return out
}

// GetProxyWorkloadLabels returns the labels of the Consul instance at the proxy's IP.
func (c *Controller) GetProxyWorkloadLabels(p *model.Proxy) labels.Instance {
	for _, ip := range p.IPAddresses {
		for _, s := range c.store.atIP(ip) {
			for _, inst := range s.instances {
				if inst.address == ip {
					return inst.labels
				}
			}
		}
	}
	return nil
}

// MCSServices implements model.ServiceDiscovery; Consul has no MCS.
func (c *Controller) MCSServices() []model.MCSServiceInfo { return nil }

// AppendServiceHandler implements model.Controller.
func (c *Controller) AppendServiceHandler(f model.ServiceHandler) { c.handlers.AppendServiceHandler(f) }

// AppendWorkloadHandler implements model.Controller; Consul workloads are not
// WorkloadEntries, so nothing selects them.
func (c *Controller) AppendWorkloadHandler(func(*model.WorkloadInstance, model.Event)) {}

// NetworkGateways implements model.NetworkGatewaysWatcher; Consul services
// carry no cross-network gateways.
func (c *Controller) NetworkGateways() []model.NetworkGateway { return nil }
