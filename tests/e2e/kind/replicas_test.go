//go:build e2ekind

package kind

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Our istiod with two replicas and the chart's PodDisruptionBudget: both
// serve the same truth (/debug/consulz, and the endpoints a sidecar-like
// client of each gets), a health flip reaches a client of each, and a
// rolling restart and the deletion of a replica cost a proxyless client
// calling a Consul service no call. The suite's one replica is restored.
func TestReplicas(t *testing.T) {
	ctx := context.Background()
	require.NoError(t, cluster.install(ctx, ReplicaOverlayArgs(cluster.cfg)))
	t.Cleanup(func() {
		// Back to one replica: the template is the suite's, so the
		// scale-down keeps one of the two pods rather than replacing them.
		require.NoError(t, cluster.install(ctx, OverlayArgs(cluster.cfg)))
		_, err := cluster.waitRollout(ctx, "istiod")
		require.NoError(t, err)
	})
	d, err := cluster.waitRollout(ctx, "istiod")
	require.NoError(t, err)
	require.EqualValues(t, 2, *d.Spec.Replicas)
	pdb, err := cluster.kube.Client.PolicyV1().PodDisruptionBudgets("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	require.NoError(t, err, "the chart's PodDisruptionBudget")
	require.NotNil(t, pdb.Spec.MinAvailable)
	assert.Equal(t, 1, pdb.Spec.MinAvailable.IntValue(), "PodDisruptionBudget minAvailable")

	s := e2e.NewService(t, cluster, "replicas", 2, e2e.GRPCMeta, nil)
	c := cluster.Dial(t, s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	edsCluster := fmt.Sprintf("outbound|%d||replicas.service.consul", echoPort)
	replicas := cluster.istiodReplicas(t)
	agree := func(when string, wantEndpoints int) {
		t.Helper()
		var views, endpoints []string
		for _, pod := range replicas {
			var v, e string
			require.Eventually(t, func() bool {
				v, e = cluster.servedView(t, pod), cluster.sidecarEndpoints(t, pod, edsCluster)
				return strings.Contains(v, "replicas ") && e != "" && strings.Count(e, ",")+1 == wantEndpoints
			}, time.Minute, time.Second, "%s: replica %s never served %d endpoints of replicas (has %q)", when, pod, wantEndpoints, e)
			views, endpoints = append(views, v), append(endpoints, e)
		}
		assert.Equal(t, views[0], views[1], "%s: /debug/consulz (service, VIP, routed instances) of the two replicas", when)
		assert.Equal(t, endpoints[0], endpoints[1], "%s: the endpoints a sidecar-like client of each replica gets", when)
		t.Logf("%s: both replicas serve %d services alike; %s: %s", when, strings.Count(views[0], "\n"), edsCluster, endpoints[0])
	}
	agree("both replicas up", 2)

	// A health flip reaches a client of each replica, and the proxyless pod.
	start := time.Now()
	s.SetHealth(1, api.HealthCritical)
	agree("after a health flip", 1)
	t.Logf("Consul critical -> the proxyless pod stopped calling the instance in %v", e2e.WaitUntilGone(t, c, s.ID(1), start))
	s.SetHealth(1, api.HealthPassing)
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	// survive makes a change while the client calls, waits for the
	// rollout, and checks that no call failed and the replicas agree.
	survive := func(what string, change func()) {
		t.Helper()
		loop := cluster.client.loop(s.Target())
		change()
		_, err := cluster.waitRollout(ctx, "istiod")
		require.NoError(t, err)
		loop.stop(t, what, minCalls)
		t.Logf("%s: the client's xDS stream reached a replica %v after the rollout", what, cluster.client.waitConnected(t, c, "default"))
		replicas = cluster.istiodReplicas(t)
		agree("after "+what, 2)
	}
	survive("a rolling restart of 2 replicas", func() { // kubectl rollout restart
		patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`,
			time.Now().Format(time.RFC3339))
		_, err := cluster.kube.Client.AppsV1().Deployments("istio-system").Patch(ctx, "istiod", types.StrategicMergePatchType,
			[]byte(patch), metav1.PatchOptions{})
		require.NoError(t, err)
	})
	survive("one of 2 replicas deleted", func() {
		pods := cluster.kube.Client.CoreV1().Pods("istio-system")
		require.NoError(t, pods.Delete(ctx, replicas[0], metav1.DeleteOptions{}))
		require.Eventually(t, func() bool {
			_, err := pods.Get(ctx, replicas[0], metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		}, 2*time.Minute, time.Second, "the deleted replica %s is still there", replicas[0])
	})
}

// istiodReplicas lists the default revision's Ready istiod pods; there
// must be two.
func (c *Cluster) istiodReplicas(t *testing.T) []string {
	t.Helper()
	var pods []string
	require.Eventually(t, func() bool {
		var err error
		pods, err = c.podNames(context.Background(), "istio-system", istiodSelector("default"))
		return err == nil && len(pods) == 2
	}, 2*time.Minute, time.Second, "two Ready istiod replicas")
	sort.Strings(pods)
	return pods
}

// servedView is what an istiod pod's /debug/consulz says it serves
// (harness.ServedView, every service).
func (c *Cluster) servedView(t *testing.T, pod string) string {
	t.Helper()
	b, err := c.istiodDebug(context.Background(), pod, "/debug/consulz")
	require.NoError(t, err)
	v, err := harness.ServedView(b, nil)
	require.NoError(t, err, "%s", b)
	return v
}

// sidecarEndpoints is what an Envoy-like client of this one istiod pod
// (ADS on its plaintext port 15010, through a port-forward) gets for an
// EDS cluster: its endpoint addresses, sorted, comma-separated.
func (c *Cluster) sidecarEndpoints(t *testing.T, pod, edsCluster string) string {
	t.Helper()
	local, stop, err := portForward(c.kube.Config, "istio-system", pod, 15010)
	require.NoError(t, err)
	defer stop()
	d, err := harness.ADSDump(local, c.ClientNamespace(), edsCluster)
	require.NoError(t, err)
	addrs := harness.EndpointAddrs(d.Endpoints[edsCluster])
	sort.Strings(addrs)
	return strings.Join(addrs, ",")
}
