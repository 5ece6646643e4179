package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// Kube is a real Kubernetes API (etcd + kube-apiserver, no kubelet) with
// Istio's CRDs and an istio-system namespace.
type Kube struct {
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface
	// auditLog is the API server's audit log of status writes to Istio
	// objects ("" for a cluster the harness did not start).
	auditLog string
}

// auditPolicy records every write of status to Istio's ServiceEntries and
// WorkloadEntries, and nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources: [{group: networking.istio.io, resources: ["serviceentries/status", "workloadentries/status"]}]
- level: None
`

// StartKube starts etcd and kube-apiserver; both stop at the env's cleanup.
func StartKube(env Env) (*Kube, error) {
	etcdBin, err := Binary("etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := Binary("kube-apiserver")
	if err != nil {
		return nil, err
	}
	dir := env.TempDir()
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	etcd, err := Start(dir, "etcd", etcdBin, []string{
		"--data-dir", filepath.Join(dir, "etcd"), "--name", "default",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL, "--log-level", "warn",
	}, nil)
	if err != nil {
		return nil, err
	}
	env.Cleanup(etcd.Stop)
	if err := etcd.WaitReady(30*time.Second, httpOK(etcdURL+"/health", nil)); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}

	token := "pilot-consul-test-token"
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	saKey := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(saKey, keyPEM, 0o600); err != nil {
		return nil, err
	}
	auditLog, policy := filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	api, err := Start(dir, "kube-apiserver", apiBin, []string{
		"--audit-policy-file", policy, "--audit-log-path", auditLog, "--audit-log-format", "json",
		"--audit-log-mode", "blocking",
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"), "--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--authorization-mode", "RBAC", "--service-cluster-ip-range", "10.96.0.0/16",
		"--disable-admission-plugins", "ServiceAccount", "--v", "0",
	}, nil)
	if err != nil {
		return nil, err
	}
	env.Cleanup(api.Stop)
	server := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
`, server, token)), 0o600); err != nil {
		return nil, err
	}
	if err := api.WaitReady(90*time.Second, httpOK(server+"/readyz", map[string]string{"Authorization": "Bearer " + token})); err != nil {
		return nil, fmt.Errorf("kube-apiserver: %w", err)
	}
	k, err := ConnectKube(kubeconfig)
	if err != nil {
		return nil, err
	}
	if err := k.setup(); err != nil {
		return nil, err
	}
	k.auditLog = auditLog
	return k, nil
}

// StatusWrite is one write of status the API server recorded.
type StatusWrite struct {
	Verb                      string
	Resource, Namespace, Name string
	Code                      int
}

// StatusWrites returns the status writes to Istio ServiceEntries and
// WorkloadEntries the API server has seen (a cluster StartKube started).
func (k *Kube) StatusWrites() ([]StatusWrite, error) {
	if k.auditLog == "" {
		return nil, fmt.Errorf("no audit log: not a cluster the harness started")
	}
	data, err := os.ReadFile(k.auditLog)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	var out []StatusWrite
	for _, line := range strings.Split(string(data), "\n") {
		var e struct {
			Verb      string `json:"verb"`
			ObjectRef struct {
				Resource, Namespace, Name, Subresource string
			} `json:"objectRef"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if strings.TrimSpace(line) == "" || json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		out = append(out, StatusWrite{Verb: e.Verb, Resource: e.ObjectRef.Resource, Namespace: e.ObjectRef.Namespace,
			Name: e.ObjectRef.Name, Code: e.ResponseStatus.Code})
	}
	return out, nil
}

// ConnectKube is a client for the cluster a kubeconfig names (a kind
// cluster, or the local one StartKube wrote).
func ConnectKube(kubeconfig string) (*Kube, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	k := &Kube{Kubeconfig: kubeconfig, Config: cfg}
	if k.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if k.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kube) setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := k.EnsureNamespace(ctx, "istio-system"); err != nil {
		return err
	}
	crds, err := os.ReadFile(filepath.Join(IstioTree(), "manifests/charts/base/files/crd-all.gen.yaml"))
	if err != nil {
		return fmt.Errorf("istio CRDs (run 'make build' to create the Istio work tree): %w", err)
	}
	if err := k.Apply(ctx, crds); err != nil {
		return fmt.Errorf("apply istio CRDs: %w", err)
	}
	// Wait until the API serves the Istio kinds istiod watches.
	return k.waitServed(ctx, "networking.istio.io/v1")
}

// waitServed waits until the API serves groupVersion (CRDs just applied).
func (k *Kube) waitServed(ctx context.Context, groupVersion string) error {
	for {
		_, err := k.Client.Discovery().ServerResourcesForGroupVersion(groupVersion)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s never served: %w", groupVersion, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// EnsureNamespace creates ns if missing.
func (k *Kube) EnsureNamespace(ctx context.Context, ns string) error {
	_, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// Apply server-side-applies every object in a multi-document YAML, of any
// kind the API serves: CustomResourceDefinitions first, so that objects of
// the kinds they define (applied after) resolve.
func (k *Kube) Apply(ctx context.Context, yaml []byte) error {
	objs, err := decodeObjects(yaml)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(k.Client.Discovery()))
	force := true
	for _, obj := range objs {
		ri, err := k.resourceFor(ctx, mapper, obj)
		if err != nil {
			return err
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return err
		}
		if _, err := ri.Patch(ctx, obj.GetName(), "application/apply-patch+yaml", data,
			metav1.PatchOptions{FieldManager: "pilot-consul-tests", Force: &force}); err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}

// Delete deletes every object in a multi-document YAML (in reverse order);
// objects already gone are not an error.
func (k *Kube) Delete(ctx context.Context, yaml []byte) error {
	objs, err := decodeObjects(yaml)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(k.Client.Discovery()))
	var errs []error
	for _, obj := range slices.Backward(objs) {
		ri, err := k.resourceFor(ctx, mapper, obj)
		if err == nil {
			err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// decodeObjects splits a multi-document YAML into objects, CRDs first.
func decodeObjects(yaml []byte) ([]*unstructured.Unstructured, error) {
	var crds, rest []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(yaml), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return append(crds, rest...), nil
			}
			return nil, fmt.Errorf("decode yaml: %w", err)
		}
		switch {
		case len(obj.Object) == 0:
		case obj.GetKind() == "CustomResourceDefinition":
			crds = append(crds, obj)
		default:
			rest = append(rest, obj)
		}
	}
}

// resourceFor is the API resource serving obj (namespaced: in obj's
// namespace, default if unset).
func (k *Kube) resourceFor(ctx context.Context, mapper *restmapper.DeferredDiscoveryRESTMapper, obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	var mapping *meta.RESTMapping
	for {
		var err error
		if mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err == nil {
			break
		}
		if !meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		// A CRD applied a moment ago may not be served yet.
		mapper.Reset()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s %s: kind never served: %w", gvk.Kind, obj.GetName(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if mapping.Scope.Name() != meta.RESTScopeNameNamespace {
		return k.Dynamic.Resource(mapping.Resource), nil
	}
	ns := obj.GetNamespace()
	if ns == "" {
		ns = "default"
	}
	return k.Dynamic.Resource(mapping.Resource).Namespace(ns), nil
}

// InstallGatewayAPI applies the Gateway API CRDs (standard channel) of the
// version the Istio release pins, from its Go module: what a cluster with
// waypoints has.
func (k *Kube) InstallGatewayAPI(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = Root() // in the release's workspace (GOWORK), as the tests run
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("locate the gateway-api module: %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config/crd/standard")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no Gateway API CRDs in %s: %v", dir, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := k.Apply(ctx, b); err != nil {
			return fmt.Errorf("gateway api %s: %w", filepath.Base(f), err)
		}
	}
	return k.waitServed(ctx, "gateway.networking.k8s.io/v1")
}
