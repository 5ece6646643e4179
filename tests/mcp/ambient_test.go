package mcp

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pkg/workloadapi"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The answer to "does MCP reach ztunnel?": no. Upstream's ambient index
// reads ServiceEntries and WorkloadEntries from Kubernetes informers, not
// from the config store that MCP fills; so a Consul service served over
// MCP routes for sidecars and proxyless clients but never appears in WDS,
// while the same kind of objects applied to Kubernetes do. Ambient needs
// the in-tree registry (docs/ambient.md).
func TestAmbientDoesNotSeeMCPConfig(t *testing.T) {
	i, err := harness.NewUpstreamIstiod(t, kube, harness.MCPMeshConfig(server.XDSAddr))
	require.NoError(t, err)
	i.Env = append(i.Env, "PILOT_ENABLE_AMBIENT=true")
	require.NoError(t, i.Start())
	wds, err := harness.StartWDSClient(t, i.XDSAddr, func(string, *workloadapi.Address) {})
	require.NoError(t, err)

	// Control: a ServiceEntry and WorkloadEntry in Kubernetes reach WDS.
	ctx := context.Background()
	require.NoError(t, kube.EnsureNamespace(ctx, "ambient-control"))
	control := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: control, namespace: ambient-control}
spec:
  hosts: [control.example.internal]
  addresses: [240.240.0.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: control}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: control-1, namespace: ambient-control, labels: {app: control}}
spec: {address: 127.0.0.81, labels: {app: control}}
`
	require.NoError(t, kube.Apply(ctx, []byte(control)))
	t.Cleanup(func() { _ = kube.Delete(ctx, []byte(control)) })
	require.Eventually(t, func() bool {
		v := wds.View("ambient-control", "control.example.internal")
		return v.Present && len(v.Workloads) == 1
	}, 30*time.Second, 50*time.Millisecond, "a Kubernetes ServiceEntry and WorkloadEntry reach WDS")

	s := e2e.NewService(t, local, "notambient", 1, e2e.GRPCMeta, nil)
	x, err := harness.NewXDSClient(i.XDSAddr, "default")
	require.NoError(t, err)
	c, err := x.Dial(s.Target())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e2e.EventuallyServedBy(t, c, s.ID(0))
	// Served to proxyless clients by this istiod: a WDS that had it would
	// have it within its own push, well inside this.
	assert.Never(t, func() bool {
		v := wds.View("consul", s.Name+".service.consul")
		return v.Present || len(v.Workloads) > 0
	}, 3*time.Second, 50*time.Millisecond, "MCP configs do not reach the ambient index")
	require.NoError(t, wds.Err())
}
