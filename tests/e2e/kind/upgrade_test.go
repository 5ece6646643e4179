//go:build e2ekind

package kind

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Our build of the previous minor, installed with its release's chart
// (revision consul), upgraded in place by `helm upgrade` with the current
// release's chart to our current build, and rolled back by `helm rollback`.
// The namespace's pods were injected by the previous release (its proxies:
// a control plane may be a minor ahead of its data plane, never behind)
// and are not restarted. A client calls a Consul service in a loop through
// each change: no failed call; after each, a health flip still reaches it.
func TestUpgradeFromPreviousRelease(t *testing.T) {
	ctx := context.Background()
	previous := HelmIstiod{Release: cluster.cfg.PreviousRelease, Image: cluster.cfg.PreviousPilotImage,
		ProxyTag: cluster.cfg.PreviousProxyTag, Consul: true}
	current := HelmIstiod{Release: harness.IstioRelease(), Image: cluster.cfg.PilotImage, ProxyTag: cluster.cfg.ProxyTag, Consul: true}
	require.NoError(t, cluster.helm(ctx, append([]string{"install", helmRelease}, HelmArgs(cluster.cfg, previous)...)...))
	t.Cleanup(func() { _ = cluster.helm(ctx, "uninstall", helmRelease, "--namespace", "istio-system", "--wait") })
	cluster.expectRevisionVersion(t, previous.Release)

	m := cluster.newClient(t, "e2e-upgrade", "istio.io/rev: "+canary)
	assert.True(t, strings.HasSuffix(m.proxyImage(t), ":"+previous.ProxyTag), "the pod's proxy is the previous release's: %s", m.proxyImage(t))
	s := e2e.NewService(t, cluster, "upgrade", 2, e2e.GRPCMeta, nil)
	c := m.dial(s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	loop := m.loop(s.Target())
	require.NoError(t, cluster.helm(ctx, append([]string{"upgrade", helmRelease}, HelmArgs(cluster.cfg, current)...)...))
	loop.stop(t, "helm upgrade, in place: ours "+previous.Release+" -> ours "+current.Release, minCalls)
	cluster.expectRevisionVersion(t, current.Release)
	t.Logf("the client's xDS stream reached the new istiod %v after its rollout", m.waitConnected(t, c, canary))
	start := time.Now()
	s.SetHealth(1, api.HealthCritical)
	t.Logf("after the upgrade: Consul critical -> the client stopped calling the instance in %v", e2e.WaitUntilGone(t, c, s.ID(1), start))

	loop = m.loop(s.Target())
	require.NoError(t, cluster.helm(ctx, "rollback", helmRelease, "1", "--namespace", "istio-system", "--wait", "--timeout", "5m"))
	loop.stop(t, "helm rollback, in place: ours "+current.Release+" -> ours "+previous.Release, minCalls)
	cluster.expectRevisionVersion(t, previous.Release)
	t.Logf("the client's xDS stream reached the rolled-back istiod %v after its rollout", m.waitConnected(t, c, canary))
	s.SetHealth(1, api.HealthPassing)
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
}

// expectRevisionVersion waits until the canary revision's istiod has rolled
// out and checks that it is our build of release.
func (c *Cluster) expectRevisionVersion(t *testing.T, release string) {
	t.Helper()
	ctx := context.Background()
	_, err := c.waitRollout(ctx, "istiod-"+canary)
	require.NoError(t, err)
	pod, err := c.revisionPod(ctx, canary)
	require.NoError(t, err)
	v, err := c.istiodDebug(ctx, pod.Name, "/version")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(v), release+"+pilot-consul-"), "istiod-%s /version: %s", canary, v)
}

// proxyImage is the image of the pod's injected istio-proxy container.
func (m *meshClient) proxyImage(t *testing.T) string {
	t.Helper()
	p, err := m.c.kube.Client.CoreV1().Pods(m.ns).Get(context.Background(), "client", metav1.GetOptions{})
	require.NoError(t, err)
	for _, ct := range append(p.Spec.InitContainers, p.Spec.Containers...) {
		if ct.Name == "istio-proxy" {
			return ct.Image
		}
	}
	t.Fatalf("no istio-proxy container in %s/client", m.ns)
	return ""
}
