//go:build e2ekind

package kind

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// minCalls is the fewest calls a loop across an install change must make
// for "none failed" to mean something (a change takes 10-30 s; a call
// through kubectl exec a few milliseconds).
const minCalls = 50

// The path of an operator who already runs Istio: the release's istiod as
// shipped is the default revision (istioctl install in place over the
// suite's), ours goes in beside it as revision "consul" — by istioctl, then
// by Helm — and namespaces move to it and back one at a time. All along, a
// client of the default revision calls a Kubernetes service and no call
// fails, and the default istiod is never replaced. Ours goes back in place
// at the end (istioctl install), again with no failed call.
func TestUpstreamFirstThenCanary(t *testing.T) {
	ctx := context.Background()
	kube := cluster.kubeService(t)
	svc := e2e.NewService(t, cluster, "canary", 1, e2e.GRPCMeta, nil)
	e2e.EventuallyServedBy(t, cluster.client.dial(svc.Target()), svc.ID(0))
	e2e.EventuallyServedBy(t, cluster.client.dial(kube), kubeServer)

	loop := cluster.client.loop(kube)
	upstream := cluster.reinstall(t, UpstreamOverlayArgs(cluster.cfg))
	loop.stop(t, "istioctl install, in place: ours -> the release's istiod", minCalls)
	t.Logf("the client's xDS stream reached the release's istiod %v after the rollout",
		cluster.client.waitConnected(t, cluster.client.dial(kube), "default"))
	t.Cleanup(func() {
		loop := cluster.client.loop(kube)
		cluster.reinstall(t, OverlayArgs(cluster.cfg))
		loop.stop(t, "istioctl install, in place: the release's istiod -> ours", minCalls)
		t.Logf("the client's xDS stream reached ours %v after the rollout",
			cluster.client.waitConnected(t, cluster.client.dial(kube), "default"))
		e2e.EventuallyServedBy(t, cluster.client.dial(svc.Target()), svc.ID(0))
	})
	p, err := cluster.kube.Client.CoreV1().Pods("istio-system").Get(ctx, upstream, metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, cluster.cfg.UpstreamPilotImage, p.Spec.Containers[0].Image)
	cluster.client.unreachable(t, svc.Target())

	// The default revision's client, all along: its namespace keeps working.
	e2e.EventuallyServedBy(t, cluster.client.dial(kube), kubeServer)
	loop = cluster.client.loop(kube)
	t.Run("istioctl", func(t *testing.T) { canaryByIstioctl(t, svc, kube) })
	t.Run("helm", func(t *testing.T) { canaryByHelm(t, svc, kube) })
	loop.stop(t, "the default revision's client while canaries came and went", minCalls)

	now, err := cluster.istiodPod(ctx)
	require.NoError(t, err)
	assert.Equal(t, upstream, now.Name, "the default revision's istiod was replaced")
	assert.Zero(t, restarts(now), "the default revision's istiod restarted")
}

// canaryByIstioctl: `istioctl install --revision consul`; a namespace
// relabelled for it reaches Consul once its pod restarts, one labelled
// with a revision tag follows the tag, the first moved back (relabelled)
// no longer does; then the revision is uninstalled.
func canaryByIstioctl(t *testing.T, svc *e2e.Service, kube string) {
	ctx := context.Background()
	require.NoError(t, cluster.istioctl(ctx, append([]string{"install", "-y"}, CanaryOverlayArgs(cluster.cfg)...)...))
	uninstalled := false
	uninstall := func() {
		require.NoError(t, cluster.istioctl(ctx, "uninstall", "-y", "--revision", canary))
		uninstalled = true
		// istioctl returns before the deletions complete; Helm would
		// refuse a leftover it does not own.
		require.Eventually(t, func() bool {
			_, errSA := cluster.kube.Client.CoreV1().ServiceAccounts("istio-system").Get(ctx, "istiod-"+canary, metav1.GetOptions{})
			_, errRole := cluster.kube.Client.RbacV1().ClusterRoles().Get(ctx, "istiod-clusterrole-"+canary+"-istio-system", metav1.GetOptions{})
			return apierrors.IsNotFound(errSA) && apierrors.IsNotFound(errRole)
		}, time.Minute, time.Second, "istiod-%s's objects left after istioctl uninstall --revision", canary)
	}
	t.Cleanup(func() {
		if !uninstalled {
			uninstall()
		}
	})

	// A namespace of the default revision moves: relabelled, its pod
	// restarted, it reaches Consul.
	moved := cluster.newClient(t, "e2e-canary", "istio-injection: enabled")
	assert.Equal(t, "default", moved.revision(t), "injected before the move by")
	moved.unreachable(t, svc.Target())
	moved.relabel(t, map[string]string{"istio.io/rev": canary})
	assert.Equal(t, canary, moved.restart(t), "injected after the move by")
	e2e.EventuallyServedBy(t, moved.dial(svc.Target()), svc.ID(0))

	// A revision tag: the namespace follows it when its pods restart.
	require.NoError(t, cluster.istioctl(ctx, "tag", "set", "prod", "--revision", canary, "-y"))
	tagged := cluster.newClient(t, "e2e-tagged", "istio.io/rev: prod")
	assert.Equal(t, canary, tagged.revision(t), "injected through tag prod -> %s", canary)
	e2e.EventuallyServedBy(t, tagged.dial(svc.Target()), svc.ID(0))
	require.NoError(t, cluster.istioctl(ctx, "tag", "set", "prod", "--revision", "default", "--overwrite", "-y"))
	assert.Equal(t, "default", tagged.restart(t), "injected through tag prod -> default")
	tagged.unreachable(t, svc.Target())
	e2e.EventuallyServedBy(t, tagged.dial(kube), kubeServer)
	require.NoError(t, cluster.istioctl(ctx, "tag", "remove", "prod", "-y"))

	// Rollback: the namespace goes back to the default revision.
	moved.relabel(t, map[string]string{"istio-injection": "enabled"})
	assert.Equal(t, "default", moved.restart(t), "injected after the rollback by")
	moved.unreachable(t, svc.Target())
	e2e.EventuallyServedBy(t, moved.dial(kube), kubeServer)

	uninstall()
}

// canaryByHelm: the release's istiod as shipped installed as revision
// consul with the release's chart, a namespace on it, then `helm upgrade`
// to ours in place (build/install/values.yaml) with a revision tag: the
// same pods now reach Consul, the shared cases pass through it, the tag
// moves a namespace; then `helm rollback` to the release's istiod and
// `helm uninstall`. The namespace's client calls a Kubernetes service
// through both changes without a failed call.
func canaryByHelm(t *testing.T, svc *e2e.Service, kube string) {
	ctx := context.Background()
	shipped := HelmIstiod{Release: harness.IstioRelease(), Image: cluster.cfg.UpstreamPilotImage, ProxyTag: cluster.cfg.ProxyTag}
	require.NoError(t, cluster.helm(ctx, append([]string{"install", helmRelease}, HelmArgs(cluster.cfg, shipped)...)...))
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			_ = cluster.helm(ctx, "uninstall", helmRelease, "--namespace", "istio-system", "--wait")
		}
	})
	m := cluster.newClient(t, "e2e-canary-helm", "istio.io/rev: "+canary)
	assert.Equal(t, canary, m.revision(t), "injected by")
	m.unreachable(t, svc.Target())
	e2e.EventuallyServedBy(t, m.dial(kube), kubeServer)

	ours := HelmIstiod{Release: harness.IstioRelease(), Image: cluster.cfg.PilotImage, ProxyTag: cluster.cfg.ProxyTag, Consul: true}
	loop := m.loop(kube)
	require.NoError(t, cluster.helm(ctx, append([]string{"upgrade", helmRelease},
		append(HelmArgs(cluster.cfg, ours), "--set", "revisionTags={prod}")...)...))
	loop.stop(t, "helm upgrade, in place: the release's istiod -> ours (revision consul)", minCalls)
	e2e.EventuallyServedBy(t, m.dial(svc.Target()), svc.ID(0)) // the same pod, now served by ours

	for _, c := range e2e.Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, clientEnv{cluster, m}) })
	}
	tagged := cluster.newClient(t, "e2e-tagged-helm", "istio.io/rev: prod")
	assert.Equal(t, canary, tagged.revision(t), "injected through Helm's revisionTags prod -> %s", canary)
	e2e.EventuallyServedBy(t, tagged.dial(svc.Target()), svc.ID(0))

	e2e.EventuallyServedBy(t, m.dial(kube), kubeServer)
	loop = m.loop(kube)
	require.NoError(t, cluster.helm(ctx, "rollback", helmRelease, "1", "--namespace", "istio-system", "--wait", "--timeout", "5m"))
	loop.stop(t, "helm rollback, in place: ours -> the release's istiod (revision consul)", minCalls)
	m.unreachable(t, svc.Target())

	require.NoError(t, cluster.helm(ctx, "uninstall", helmRelease, "--namespace", "istio-system", "--wait"))
	uninstalled = true
}

// kubeServer answers the Kubernetes service of kubeService.
const kubeServer = "kube-0"

// kubeService is a Kubernetes Service (consul-backends/echo-kube, port
// grpc) in front of a server pod: what every revision serves, ours or not.
// Returns its mesh target.
func (c *Cluster) kubeService(t *testing.T) string {
	t.Helper()
	c.StartServer(t, "kube", 0)
	c.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo-kube, namespace: consul-backends}
spec:
  selector: {instance: %s}
  ports: [{name: grpc, port: %d, targetPort: %d}]
`, kubeServer, echoPort, echoPort))
	return fmt.Sprintf("echo-kube.consul-backends.svc.cluster.local:%d", echoPort)
}
