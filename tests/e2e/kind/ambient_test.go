//go:build e2ekind

package kind

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// istiod reinstalled with the ambient profile (pilot only: no ztunnel image
// exists here) serves Consul services over WDS inside the cluster: a WDS
// client subscribed as ztunnel, run in the client pod, sees the service,
// its healthy instances with identity and tunnel, a health flip as one
// removal, and deregistration; /debug/ambientz lists them. The suite's
// install is restored afterwards.
func TestAmbient(t *testing.T) {
	ctx := context.Background()
	pod := cluster.reinstall(t, AmbientOverlayArgs(cluster.cfg))
	t.Cleanup(func() { cluster.reinstall(t, OverlayArgs(cluster.cfg)) })
	d, err := cluster.kube.Client.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Contains(t, d.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "PILOT_ENABLE_AMBIENT", Value: "true"})

	agent := cluster.consul.Agent()
	for _, r := range []api.AgentServiceRegistration{
		{ID: "ambient-kind-1", Name: "ambient-kind", Address: "198.19.250.71", Port: 8080, Meta: map[string]string{
			"protocol": "http", "service-account": "ambient", "tls-mode": "istio", "tunnel": "http", "zone": "z1"}},
		{ID: "ambient-kind-2", Name: "ambient-kind", Address: "198.19.250.72", Port: 8080},
	} {
		r.Check = &api.AgentServiceCheck{CheckID: "ttl-" + r.ID, TTL: "1h", Status: api.HealthPassing}
		require.NoError(t, agent.ServiceRegister(&r))
		t.Cleanup(func() { _ = agent.ServiceDeregister(r.ID) })
	}
	w := cluster.watchWDS(t, "consul/ambient-kind.service.consul")
	v := w.waitFor(t, "the service and both instances", func(v harness.WDSView) bool {
		return v.Present && len(v.Workloads) == 2
	})

	var consulz struct {
		Registries []struct {
			Services []struct {
				VIP string `json:"vip"`
			} `json:"services"`
		} `json:"registries"`
	}
	b, err := cluster.istiodDebug(ctx, pod, "/debug/consulz?service=ambient-kind")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &consulz), "%s", b)
	require.True(t, len(consulz.Registries) == 1 && len(consulz.Registries[0].Services) == 1, "%s", b)
	assert.Equal(t, []string{consulz.Registries[0].Services[0].VIP}, v.Addresses, "the VIP sidecars get")
	assert.Equal(t, []uint32{8080}, v.Ports)
	meshed, plain := v.Workloads[0], v.Workloads[1]
	assert.Equal(t, harness.WDSWorkload{UID: meshed.UID, Address: "198.19.250.71", ServiceAccount: "ambient",
		Tunnel: "HBONE", Region: "dc1", Zone: "z1"}, meshed)
	assert.Equal(t, harness.WDSWorkload{UID: plain.UID, Address: "198.19.250.72", Tunnel: "NONE", Region: "dc1"}, plain)

	// /debug/ambientz lists the service and both workloads.
	b, err = cluster.istiodDebug(ctx, pod, "/debug/ambientz")
	require.NoError(t, err)
	z, err := harness.ParseAmbientz(b, "consul", "ambient-kind.service.consul")
	require.NoError(t, err)
	assert.Equal(t, harness.Ambientz{Listed: true, Workloads: []string{"198.19.250.71", "198.19.250.72"}}, z)

	// A health flip reaches the in-cluster client as one resource: the
	// flipped workload's removal.
	w.received()
	require.NoError(t, agent.UpdateTTL("ttl-ambient-kind-2", "", api.HealthCritical))
	w.waitFor(t, "the flipped instance removed", func(v harness.WDSView) bool {
		return len(v.Workloads) == 1 && v.Workloads[0].Address == "198.19.250.71"
	})
	assert.Equal(t, []string{"-" + plain.UID}, w.received(), "only the flipped workload changes (client: %s)", w.stderr())

	require.NoError(t, agent.ServiceDeregister("ambient-kind-1"))
	require.NoError(t, agent.ServiceDeregister("ambient-kind-2"))
	w.waitFor(t, "everything removed on deregistration", func(v harness.WDSView) bool {
		return !v.Present && len(v.Workloads) == 0
	})
}

// reinstall runs istioctl install with overlay and returns the new istiod
// pod once it is Ready.
func (c *Cluster) reinstall(t *testing.T, overlay []string) string {
	t.Helper()
	ctx := context.Background()
	old, err := c.istiodPod(ctx)
	require.NoError(t, err)
	require.NoError(t, c.install(ctx, overlay))
	_, err = c.waitRollout(ctx, "istiod") // every replica replaced, when there were several
	require.NoError(t, err)
	return c.waitReplaced(t, old)
}

// wdsWatch is `e2e-echo wds` running in the client pod: istiod's WDS as a
// client inside the cluster receives it.
type wdsWatch struct {
	mu    sync.Mutex
	last  harness.WDSView
	names []string // Received, accumulated
	err   error
	log   *syncBuffer // the client's stderr: its reconnections
}

func (w *wdsWatch) stderr() string { return w.log.String() }

func (c *Cluster) watchWDS(t *testing.T, service string) *wdsWatch {
	t.Helper()
	pod, err := c.waitReadyPod(context.Background(), "e2e-client", "app=client")
	require.NoError(t, err)
	s, err := startExec(c.kube.Config, c.kube.Client, "e2e-client", pod, "client",
		"/e2e-echo", "wds", "-service", service, "-istio-version", harness.IstioRelease())
	require.NoError(t, err)
	t.Cleanup(s.Close)
	w := &wdsWatch{log: &s.stderr}
	go func() {
		for line := range s.lines {
			var v harness.WDSView
			err := json.Unmarshal([]byte(line), &v)
			w.mu.Lock()
			if err != nil {
				w.err = err
			} else {
				w.last = v
				w.names = append(w.names, v.Received...)
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		if w.err == nil {
			w.err = fmt.Errorf("e2e-echo wds ended: %s", s.stderr.String())
		}
		w.mu.Unlock()
	}()
	return w
}

// waitFor waits until the client's view of the service satisfies ok.
func (w *wdsWatch) waitFor(t *testing.T, what string, ok func(harness.WDSView) bool) harness.WDSView {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		w.mu.Lock()
		v, err := w.last, w.err
		w.mu.Unlock()
		if err != nil {
			t.Fatalf("WDS client in the cluster, waiting for %s: %v", what, err)
		}
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("WDS client in the cluster: %s not seen within a minute; last view %+v", what, v)
		}
	}
}

// received returns the resource names received since the previous call.
func (w *wdsWatch) received() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	names := slices.Clone(w.names)
	w.names = nil
	return names
}
