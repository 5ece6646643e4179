package harness

import "fmt"

// Mesh is the whole local mesh: Consul, Kubernetes API, patched istiod and a
// proxyless gRPC xDS client factory.
type Mesh struct {
	Consul *Consul
	Kube   *Kube
	Istiod *Istiod
	XDS    *XDSClient
}

// StartMesh starts every component; step reports progress for long steps.
func StartMesh(env Env, step func(string), istiodArgs ...string) (*Mesh, error) {
	if step == nil {
		step = func(string) {}
	}
	m := &Mesh{}
	var err error
	step("starting Consul dev agent")
	if m.Consul, err = StartConsul(env); err != nil {
		return nil, err
	}
	step("starting etcd + kube-apiserver, applying Istio CRDs")
	if m.Kube, err = StartKube(env); err != nil {
		return nil, err
	}
	step("starting patched istiod (--registries=Kubernetes,Consul)")
	if m.Istiod, err = StartIstiod(env, m.Kube, m.Consul.URL(), istiodArgs...); err != nil {
		return nil, err
	}
	if m.XDS, err = NewXDSClient(m.Istiod.XDSAddr, "default"); err != nil {
		return nil, fmt.Errorf("xds client: %w", err)
	}
	return m, nil
}
