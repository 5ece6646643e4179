package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// KubeDomain is where Route K's Services live in the mesh: namespace
// Namespace, istiod's default cluster.local suffix.
const KubeDomain = Namespace + ".svc.cluster.local"

// KubeServices holds the dataset as a Kubernetes user would publish
// services running outside any pod: one selector-less Service per service
// and one EndpointSlice per Service holding its instances, written by "a
// controller of ours" (managed-by). A health flip is one EndpointSlice
// write, as the EndpointSlice controller makes when a pod's readiness
// changes.
type KubeServices struct {
	Client kubernetes.Interface
	Data   Dataset // Domain is KubeDomain

	once  sync.Once
	state []*sliceState // by service
}

// sliceState is what one service's EndpointSlice says; its lock orders the
// writes of one slice, as the EndpointSlice controller's per-service queue does.
type sliceState struct {
	sync.Mutex
	ready, registered []bool
}

// Load creates every Service and EndpointSlice with 16 workers. As for
// Route B, the writer's own work is not measured: this runs before istiod
// starts.
func (k *KubeServices) Load(ctx context.Context) error {
	d := k.Data
	svcs := func(yield func(int) bool) {
		for i := 0; i < d.N; i++ {
			if !yield(i) {
				return
			}
		}
	}
	err := inParallel(16, svcs, func(i int) error {
		_, err := k.Client.CoreV1().Services(Namespace).Create(ctx, k.service(i), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Service %s: %w", d.Name(i), err)
		}
		st := k.stateOf(i)
		st.Lock()
		defer st.Unlock()
		_, err = k.Client.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, k.slice(i, st), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create EndpointSlice %s: %w", d.Name(i), err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load %d×%d instances as Services/EndpointSlices: %w", d.N, d.M, err)
	}
	return nil
}

// stateOf is service i's slice state; every instance starts ready and registered.
func (k *KubeServices) stateOf(i int) *sliceState {
	k.once.Do(func() {
		k.state = make([]*sliceState, k.Data.N)
		for s := range k.state {
			st := &sliceState{ready: make([]bool, k.Data.M), registered: make([]bool, k.Data.M)}
			for j := range st.ready {
				st.ready[j], st.registered[j] = true, true
			}
			k.state[s] = st
		}
	})
	return k.state[i]
}

func (k *KubeServices) service(i int) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: k.Data.Name(i), Namespace: Namespace},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Port: Port, Protocol: corev1.ProtocolTCP, AppProtocol: ref("http"),
			TargetPort: intstr.FromInt32(Port),
		}}},
	}
}

func (k *KubeServices) slice(i int, st *sliceState) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: k.Data.Name(i), Namespace: Namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: k.Data.Name(i),
			discoveryv1.LabelManagedBy:   "pilot-consul-bench",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   k.endpoints(i, st),
		Ports: []discoveryv1.EndpointPort{{
			Name: ref("http"), Port: ref[int32](Port), Protocol: ref(corev1.ProtocolTCP), AppProtocol: ref("http"),
		}},
	}
}

// endpoints lists service i's registered instances. A not-ready endpoint
// says serving and terminating false, as for a pod failing its readiness
// probe: istiod reads a missing terminating as "terminating", not "unhealthy".
func (k *KubeServices) endpoints(i int, st *sliceState) []discoveryv1.Endpoint {
	out := []discoveryv1.Endpoint{}
	for j := range st.ready {
		if !st.registered[j] {
			continue
		}
		in := Instance{i, j}
		ready := st.ready[j]
		out = append(out, discoveryv1.Endpoint{
			Addresses: []string{k.Data.IP(in)},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ref(ready), Serving: ref(ready), Terminating: ref(false),
			},
			Zone: ref(k.Data.Zone(in)),
		})
	}
	return out
}

// SetHealthy flips one endpoint's ready condition: one EndpointSlice write.
func (k *KubeServices) SetHealthy(ctx context.Context, in Instance, healthy bool) error {
	return k.write(ctx, in, func(st *sliceState) { st.ready[in.Idx] = healthy })
}

// SetRegistered removes one endpoint from its slice or adds it back (ready).
func (k *KubeServices) SetRegistered(ctx context.Context, in Instance, registered bool) error {
	return k.write(ctx, in, func(st *sliceState) { st.registered[in.Idx], st.ready[in.Idx] = registered, true })
}

// write applies change to the service's state and replaces the slice's
// endpoints with a merge patch (a list is replaced whole), so no read comes
// before the write.
func (k *KubeServices) write(ctx context.Context, in Instance, change func(*sliceState)) error {
	st := k.stateOf(in.Svc)
	st.Lock()
	defer st.Unlock()
	change(st)
	patch, err := json.Marshal(map[string]any{"endpoints": k.endpoints(in.Svc, st)})
	if err != nil {
		return err
	}
	_, err = k.Client.DiscoveryV1().EndpointSlices(Namespace).Patch(ctx, k.Data.Name(in.Svc),
		types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patch EndpointSlice %s for %s: %w", k.Data.Name(in.Svc), k.Data.ID(in), err)
	}
	return nil
}

// ref is a pointer to v, for the API's optional fields.
func ref[T any](v T) *T { return &v }
