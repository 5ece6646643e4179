// Package install checks the cluster install path as far as this machine
// allows (no Docker, no kubelet): the istioctl overlay renders with the
// patched tree's istioctl, the istiod Deployment carries our image, flags and
// Secret mount, every rendered object applies to a real kube-apiserver, and
// the patched pilot-discovery run with the Deployment's own args serves a
// Consul service. So the overlay cannot drift from what works.
package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

const (
	hub       = "registry.example.test/pilot-consul"
	tag       = "test"
	tokenPath = "/var/run/secrets/consul/token"
)

// render runs `make manifests`' script with a known image and returns the
// istioctl rendering of the operator overlay.
func render(t *testing.T) []byte {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.Root(), "build/manifests.sh"))
	cmd.Env = append(os.Environ(), "HUB="+hub, "TAG="+tag)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "build/manifests.sh:\n%s", out)
	operator, err := os.ReadFile(filepath.Join(harness.OutDir(), "manifests/istio.yaml"))
	require.NoError(t, err)
	return operator
}

// renderHelm renders the release's own istiod chart with
// build/install/values.yaml through the helm CLI (built from its Go
// module), as `helm template istiod <chart> -n istio-system -f values.yaml
// --set image=...` does for a user; Helm keeps its cache and config in a
// temporary directory.
func renderHelm(t *testing.T) []byte {
	t.Helper()
	bin, err := harness.Binary("helm")
	require.NoError(t, err)
	home := t.TempDir()
	cmd := exec.Command(bin, "template", "istiod", filepath.Join(harness.IstioTree(), "manifests/charts/istio-control/istio-discovery"),
		"--namespace", "istio-system", "-f", filepath.Join(harness.Root(), "build/install/values.yaml"),
		"--set", "image="+hub+"/pilot:"+tag)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "helm template:\n%s", stderr.String())
	return out
}

// istiod finds the istiod Deployment in a rendered manifest.
func istiod(t *testing.T, manifest []byte) *appsv1.Deployment {
	return deployment(t, manifest, "istiod")
}

// deployment finds a Deployment by name in a rendered manifest.
func deployment(t *testing.T, manifest []byte, name string) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(findObject(t, manifest, "Deployment", name).Object, d))
	return d
}

// findObject finds an object by kind and name in a rendered manifest.
func findObject(t *testing.T, manifest []byte, kind, name string) *unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			require.True(t, errors.Is(err, io.EOF), "decode: %v", err)
			break
		}
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("no %s %s in the rendered manifest", kind, name)
	return nil
}

func discovery(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "discovery" {
			return c
		}
	}
	t.Fatal("istiod Deployment has no discovery container")
	return corev1.Container{}
}

func TestManifests(t *testing.T) {
	operator := render(t)
	d := istiod(t, operator)
	c := discovery(t, d)

	assert.Equal(t, hub+"/pilot:"+tag, c.Image, "our image")
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul")
	assert.Contains(t, c.Args, "--consulServerURL=http://consul-server.consul.svc:8500")
	assert.Contains(t, c.Args, "--consulTokenFile="+tokenPath+"/token")
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == tokenPath {
			mounted = true
			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == m.Name {
					require.NotNil(t, v.Secret, "the token comes from a Secret")
					assert.Equal(t, "istiod-consul-token", v.Secret.SecretName)
				}
			}
		}
	}
	assert.True(t, mounted, "the token Secret is mounted at %s", tokenPath)
	for _, a := range c.Args {
		assert.NotContains(t, strings.ToLower(a), "--consultoken=", "no token in args")
	}
	for _, e := range c.Env {
		assert.NotContains(t, e.Name, "CONSUL_HTTP_TOKEN", "no token in env")
	}
	// The Helm values are the same install: the same image, args and mounts.
	h := discovery(t, istiod(t, renderHelm(t)))
	assert.Equal(t, c.Image, h.Image, "Helm values: image")
	assert.Equal(t, c.Args, h.Args, "Helm values: args")
	assert.Equal(t, c.VolumeMounts, h.VolumeMounts, "Helm values: mounts")

	env, err := harness.NewProcessEnv("pilot-consul-install")
	require.NoError(t, err)
	t.Cleanup(env.Close)
	env.Quiet = true
	kube, err := harness.StartKube(env)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, kube.Apply(ctx, operator), "every rendered object applies server-side")
	got, err := kube.Client.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, c.Args, discovery(t, got).Args, "the API server stored the Deployment as rendered")

	runRenderedArgs(t, env, kube, c.Args)
}

// runRenderedArgs runs the patched pilot-discovery with the Deployment's own
// args against a Consul that requires an ACL token. Only what names the
// cluster is translated: Consul's in-cluster address, the Secret's mount
// path, and the monitoring listen address (a loopback port here).
func runRenderedArgs(t *testing.T, env *harness.ProcessEnv, kube *harness.Kube, rendered []string) {
	const root = "5e1f0a2b-0000-4000-8000-00000000c0de"
	consul, err := harness.StartConsul(env, harness.DenyByDefault(root))
	require.NoError(t, err)
	mount := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(mount, "token"), []byte(root), 0o600), "the Secret's key 'token'")

	var args []string
	for _, a := range rendered[1:] { // [0] is "discovery"
		switch {
		case strings.HasPrefix(a, "--consulServerURL="):
			a = "--consulServerURL=" + consul.URL()
		case strings.HasPrefix(a, "--consulTokenFile="):
			a = "--consulTokenFile=" + filepath.Join(mount, strings.TrimPrefix(a, "--consulTokenFile="+tokenPath+"/"))
		case strings.HasPrefix(a, "--monitoringAddr="):
			continue // the harness listens on a loopback port instead of :15014
		}
		args = append(args, a)
	}
	// The harness's args (loopback ports, kubeconfig, no mesh file) come
	// first; the rendered ones follow and win. The rendered --registries
	// replaces the harness's default.
	i, err := harness.StartIstiod(env, kube, "", args...)
	require.NoError(t, err)
	t.Logf("istiod ran with the rendered args (translated): %v", args)

	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = consul.HTTPAddr, root
	client, err := api.NewClient(cfg)
	require.NoError(t, err)
	require.NoError(t, client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "web-1", Name: "web", Address: "127.0.0.44", Port: 8080, Meta: map[string]string{"protocol": "http"}}))
	cluster := "outbound|8080||web.service.consul"
	var last string
	require.Eventually(t, func() bool {
		d, err := harness.ADSDump(i.XDSAddr, "default", cluster)
		if err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprint(harness.EndpointAddrs(d.Endpoints[cluster]))
		return d.Clusters[cluster] != nil && last == "[127.0.0.44:8080]"
	}, 30*time.Second, 200*time.Millisecond, "istiod run with the rendered args serves the Consul service; last: %s", last)
}
