package bench

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// Namespace the ServiceEntry bridge writes into.
const Namespace = "consul"

var (
	serviceEntries  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"}
	workloadEntries = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
)

// KubeSource holds the dataset the way a ServiceEntry-writing bridge
// (consul2istio, istio-registry-sync, Higress's SE mode) leaves it in the
// kube-apiserver: one ServiceEntry per service selecting one WorkloadEntry
// per instance, tags as labels.
type KubeSource struct {
	Client dynamic.Interface
	Data   Dataset
}

// Load creates every ServiceEntry and WorkloadEntry with 16 workers. The
// bridge's own work is not measured: this runs before istiod starts.
func (k *KubeSource) Load(ctx context.Context) error {
	d := k.Data
	objs := func(yield func(*unstructured.Unstructured) bool) {
		for i := 0; i < d.N; i++ {
			if !yield(k.serviceEntry(i)) {
				return
			}
			for j := 0; j < d.M; j++ {
				if !yield(k.workloadEntry(Instance{i, j})) {
					return
				}
			}
		}
	}
	err := inParallel(16, objs, func(o *unstructured.Unstructured) error {
		gvr := serviceEntries
		if o.GetKind() == "WorkloadEntry" {
			gvr = workloadEntries
		}
		_, err := k.Client.Resource(gvr).Namespace(Namespace).Create(ctx, o, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load %d×%d instances as ServiceEntry/WorkloadEntry: %w", d.N, d.M, err)
	}
	return nil
}

func (k *KubeSource) serviceEntry(i int) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
		"metadata": map[string]any{"name": k.Data.Name(i), "namespace": Namespace},
		"spec": map[string]any{
			"hosts":            []any{k.Data.Host(i)},
			"ports":            []any{map[string]any{"number": int64(Port), "name": "http", "protocol": "HTTP"}},
			"location":         "MESH_INTERNAL",
			"resolution":       "STATIC",
			"workloadSelector": map[string]any{"labels": map[string]any{"consul-service": k.Data.Name(i)}},
		},
	}}
}

func (k *KubeSource) workloadEntry(in Instance) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
		"metadata": map[string]any{"name": k.Data.ID(in), "namespace": Namespace, "labels": map[string]any{
			"consul-service": k.Data.Name(in.Svc), "version": k.Data.Version(in),
		}},
		"spec": map[string]any{"address": k.Data.IP(in)},
	}}
}

// SetHealthy flips one instance with one WorkloadEntry update. istiod drops a
// WorkloadEntry whose "proxy.istio.io/health-checks-enabled" annotation is
// set while it has no Healthy condition, so setting the annotation is the
// cheapest single write that takes an endpoint out, and removing it puts the
// endpoint back.
func (k *KubeSource) SetHealthy(ctx context.Context, in Instance, healthy bool) error {
	patch := `{"metadata":{"annotations":{"proxy.istio.io/health-checks-enabled":"true"}}}`
	if healthy {
		patch = `{"metadata":{"annotations":{"proxy.istio.io/health-checks-enabled":null}}}`
	}
	_, err := k.Client.Resource(workloadEntries).Namespace(Namespace).Patch(ctx, k.Data.ID(in),
		types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("patch WorkloadEntry %s: %w", k.Data.ID(in), err)
	}
	return nil
}

// SetRegistered deletes one instance's WorkloadEntry or creates it again.
func (k *KubeSource) SetRegistered(ctx context.Context, in Instance, registered bool) error {
	var err error
	if registered {
		_, err = k.Client.Resource(workloadEntries).Namespace(Namespace).Create(ctx, k.workloadEntry(in), metav1.CreateOptions{})
	} else {
		err = k.Client.Resource(workloadEntries).Namespace(Namespace).Delete(ctx, k.Data.ID(in), metav1.DeleteOptions{})
	}
	if err != nil {
		return fmt.Errorf("WorkloadEntry %s (registered %v): %w", k.Data.ID(in), registered, err)
	}
	return nil
}
