package install

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pilot-consul/pilot-consul/tests/e2e/kind"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The kind suite's install (make test-kind) rendered with the same istioctl
// args: our istiod (image, flags), pods injected with our proxy image, and
// images never pulled (kind loads them). Fails here, in seconds, before the
// kind tier spends minutes on a cluster.
func TestKindSuiteOverlayRenders(t *testing.T) {
	cfg, out := renderKind(t, kind.OverlayArgs)

	c := discovery(t, istiod(t, out))
	assert.Equal(t, cfg.PilotImage, c.Image)
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul")
	assert.Contains(t, c.Args, "--consulTokenFile="+tokenPath+"/token")

	assert.Equal(t, corev1.PullIfNotPresent, c.ImagePullPolicy)
	assert.NotContains(t, string(out), "name: istio-ingressgateway", "no gateway: the suite's proxy image has no Envoy")
	injector := configMap(t, out, "istio-sidecar-injector")
	assert.Contains(t, injector.Data["values"], `"hub": "proxy.example.test/istio"`, "proxy image hub")
	assert.Contains(t, injector.Data["values"], `"tag": "1.2.3"`, "proxy image tag")
}

// configMap finds a ConfigMap in a rendered manifest.
func configMap(t *testing.T, manifest []byte, name string) *corev1.ConfigMap {
	t.Helper()
	cm := &corev1.ConfigMap{}
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(findObject(t, manifest, "ConfigMap", name).Object, cm))
	return cm
}

// The kind suite's ambient install (TestAmbient) rendered: the same istiod
// with PILOT_ENABLE_AMBIENT, and neither ztunnel nor istio-cni, whose
// images do not exist here; injected pods keep the suite's proxy image.
func TestKindSuiteAmbientOverlayRenders(t *testing.T) {
	cfg, out := renderKind(t, kind.AmbientOverlayArgs)

	c := discovery(t, istiod(t, out))
	assert.Equal(t, cfg.PilotImage, c.Image)
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul")
	assert.Contains(t, c.Env, corev1.EnvVar{Name: "PILOT_ENABLE_AMBIENT", Value: "true"})
	assert.NotContains(t, string(out), "kind: DaemonSet", "no ztunnel, no istio-cni")
	injector := configMap(t, out, "istio-sidecar-injector")
	assert.Contains(t, injector.Data["values"], `"tag": "1.2.3"`, "proxy image tag")
	assert.NotContains(t, injector.Data["values"], `"variant": "distroless"`, "no distroless proxy image exists here")
}

// renderKind renders the kind suite's install with overlay's istioctl args.
func renderKind(t *testing.T, overlay func(kind.Config) []string) (kind.Config, []byte) {
	t.Helper()
	render(t) // builds out/<release>/istioctl if needed
	cfg := kind.Config{PilotImage: hub + "/pilot:" + tag, ProxyHub: "proxy.example.test/istio", ProxyTag: "1.2.3"}
	out, err := exec.Command(filepath.Join(harness.OutDir(), "istioctl"),
		append([]string{"manifest", "generate"}, overlay(cfg)...)...).CombinedOutput()
	require.NoError(t, err, "istioctl manifest generate:\n%s", out)
	return cfg, out
}

// The MCP overlay (build/install/mcp-operator.yaml) as the kind suite's
// TestMCPRoute installs it: istiod as shipped (no Consul flags), consul-mcp
// a native sidecar on loopback with flags consul-mcp knows, the token
// mounted, and meshConfig reading it and Kubernetes.
func TestKindSuiteMCPOverlayRenders(t *testing.T) {
	dir := t.TempDir()
	_, out := renderKind(t, func(c kind.Config) []string {
		c.MCPImage, c.UpstreamPilotImage = "mcp.example.test/consul-mcp:9.9.9", "upstream.example.test/pilot:1.30.3"
		args, err := kind.MCPOverlayArgs(c, dir)
		require.NoError(t, err)
		return args
	})
	d := istiod(t, out)
	c := discovery(t, d)
	assert.Equal(t, "upstream.example.test/pilot:1.30.3", c.Image)
	for _, a := range c.Args {
		assert.NotContains(t, a, "consul", "istiod as shipped knows no Consul flag")
	}
	require.Len(t, d.Spec.Template.Spec.InitContainers, 1)
	mcp := d.Spec.Template.Spec.InitContainers[0]
	assert.Equal(t, "consul-mcp", mcp.Name)
	assert.Equal(t, "mcp.example.test/consul-mcp:9.9.9", mcp.Image)
	require.NotNil(t, mcp.RestartPolicy)
	assert.Equal(t, corev1.ContainerRestartPolicyAlways, *mcp.RestartPolicy)
	assert.Contains(t, mcp.Args, "--consulTokenFile="+tokenPath+"/token")
	assert.Contains(t, mcp.VolumeMounts, corev1.VolumeMount{Name: "consul-token", MountPath: tokenPath, ReadOnly: true})
	help, err := exec.Command(mcpBinary(t), "--help").CombinedOutput()
	require.NoError(t, err, "%s", help)
	for _, a := range mcp.Args {
		flag, _, _ := strings.Cut(a, "=")
		assert.Contains(t, string(help), flag+" ", "consul-mcp knows %s", flag)
	}
	assert.Equal(t, "/healthz", mcp.StartupProbe.HTTPGet.Path)
	assert.Equal(t, "/ready", mcp.ReadinessProbe.HTTPGet.Path)
	mesh := configMap(t, out, "istio").Data["mesh"]
	assert.Contains(t, mesh, "- address: xds://127.0.0.1:15110")
	assert.Contains(t, mesh, "- address: k8s://")
}

func mcpBinary(t *testing.T) string {
	t.Helper()
	bin, err := harness.Binary("consul-mcp")
	require.NoError(t, err)
	return bin
}

// The lifecycle cases' installs rendered (tests/e2e/kind TestUpstreamFirstThenCanary,
// TestReplicas, TestUpgradeFromPreviousRelease): the release's istiod with
// nothing of ours; ours as revision consul beside it, by istioctl and by
// Helm with values.yaml; ours with two replicas and the chart's
// PodDisruptionBudget.
func TestKindSuiteLifecycleInstallsRender(t *testing.T) {
	const upstream = "upstream.example.test/pilot:1.30.3"
	_, out := renderKind(t, func(c kind.Config) []string {
		c.UpstreamPilotImage = upstream
		return kind.UpstreamOverlayArgs(c)
	})
	c := discovery(t, istiod(t, out))
	assert.Equal(t, upstream, c.Image)
	assert.NotContains(t, strings.Join(c.Args, " "), "consul", "the release's istiod as shipped")
	assert.Equal(t, "100m", c.Resources.Requests.Cpu().String(), "small enough for two istiods on the kind node")

	cfg, out := renderKind(t, kind.CanaryOverlayArgs)
	c = discovery(t, deployment(t, out, "istiod-consul"))
	assert.Equal(t, cfg.PilotImage, c.Image, "istioctl --revision consul")
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul", "the overlay's flags reach a revision's Deployment (istiod-consul)")
	assert.Contains(t, c.Args, "--consulTokenFile="+tokenPath+"/token")
	assert.Contains(t, configMap(t, out, "istio-sidecar-injector-consul").Data["values"], `"revision": "consul"`)

	_, out = renderKind(t, kind.ReplicaOverlayArgs)
	assert.EqualValues(t, 2, *istiod(t, out).Spec.Replicas)
	pdb := findObject(t, out, "PodDisruptionBudget", "istiod")
	minAvailable, _, _ := unstructured.NestedFieldNoCopy(pdb.Object, "spec", "minAvailable")
	assert.EqualValues(t, 1, minAvailable)

	bin, err := harness.Binary("helm")
	require.NoError(t, err)
	ours := kind.HelmIstiod{Release: harness.IstioRelease(), Image: cfg.PilotImage, ProxyTag: cfg.ProxyTag, Consul: true}
	home := t.TempDir()
	cmd := exec.Command(bin, append([]string{"template", "istiod-consul"}, kind.HelmArgs(cfg, ours)...)...)
	cmd.Env = append(cmd.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	out, err = cmd.Output()
	require.NoError(t, err, "helm template: %v", err)
	c = discovery(t, deployment(t, out, "istiod-consul"))
	assert.Equal(t, cfg.PilotImage, c.Image, "helm revision=consul")
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul", "values.yaml")
}
