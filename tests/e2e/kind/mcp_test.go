//go:build e2ekind

package kind

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
)

// The MCP route in a cluster, as a user who cannot replace istiod installs
// it: the release's istiod as shipped, installed by istioctl with
// build/install/mcp-operator.yaml, consul-mcp a native sidecar in its pod
// on loopback. A proxyless pod calls a Consul service and a health flip
// moves the traffic. The suite's install is restored afterwards.
func TestMCPRoute(t *testing.T) {
	ctx := context.Background()
	args, err := MCPOverlayArgs(cluster.cfg, t.TempDir())
	require.NoError(t, err)
	pod := cluster.reinstall(t, args)
	t.Cleanup(func() { cluster.reinstall(t, OverlayArgs(cluster.cfg)) })
	p, err := cluster.kube.Client.CoreV1().Pods("istio-system").Get(ctx, pod, metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, p.Spec.Containers, 1)
	assert.Equal(t, cluster.cfg.UpstreamPilotImage, p.Spec.Containers[0].Image, "istiod as shipped")
	assert.NotContains(t, p.Spec.Containers[0].Args, "--registries=Kubernetes,Consul")
	require.Len(t, p.Spec.InitContainers, 1)
	mcp := p.Spec.InitContainers[0]
	assert.Equal(t, "consul-mcp", mcp.Name)
	assert.Equal(t, cluster.cfg.MCPImage, mcp.Image)
	require.NotNil(t, mcp.RestartPolicy)
	assert.Equal(t, corev1.ContainerRestartPolicyAlways, *mcp.RestartPolicy, "a native sidecar")

	s := e2e.NewService(t, cluster, "mcp", 2, e2e.GRPCMeta, nil)
	c := cluster.Dial(t, s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	start := time.Now()
	s.SetHealth(1, api.HealthCritical)
	t.Logf("Consul critical -> the proxyless pod stopped calling the instance in %v", e2e.WaitUntilGone(t, c, s.ID(1), start))
	assert.Empty(t, e2e.Counts(c, 100)[s.ID(1)], "a critical instance gets no calls")
	s.SetHealth(1, api.HealthPassing)
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	b, err := cluster.istiodDebug(ctx, pod, "/debug/registryz")
	require.NoError(t, err)
	var services []struct {
		Hostname string `json:"hostname"`
	}
	require.NoError(t, json.Unmarshal(b, &services))
	assert.True(t, slices.ContainsFunc(services, func(s struct {
		Hostname string `json:"hostname"`
	}) bool {
		return s.Hostname == "mcp.service.consul"
	}), "istiod as shipped holds the Consul service")
}
