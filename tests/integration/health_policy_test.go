package integration

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// What istiod sends, and what a client calls, for each Consul health, under
// the registry's --consulSendUnhealthy and Istio's
// PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS (new in 1.31, on by default: istiod
// then sends the UNHEALTHY endpoints a registry gives it, where 1.30 drops
// them unless PILOT_SEND_UNHEALTHY_ENDPOINTS is set). docs/mapping.md
// promises that a warning, critical or maintenance instance is never
// routed: without the flag it never reaches istiod, with it istiod may
// send it marked UNHEALTHY, which clients do not call.
func TestWhatClientsReceiveForEachHealth(t *testing.T) {
	s := e2e.NewService(t, local, "health-policy", 4, e2e.GRPCMeta, nil)
	s.SetHealth(1, api.HealthWarning)
	s.SetHealth(2, api.HealthCritical)
	require.NoError(t, mesh.Consul.Client.Agent().EnableServiceMaintenance(s.ID(3), "drained for the test"))
	addr := func(i int) string {
		entries, _, err := mesh.Consul.Client.Health().Service(s.Name, "", false, nil)
		require.NoError(t, err)
		for _, e := range entries {
			if e.Service.ID == s.ID(i) {
				return fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port)
			}
		}
		t.Fatalf("instance %d of %s is not in Consul", i, s.Name)
		return ""
	}
	healthy := map[string]string{addr(0): "HEALTHY"}
	all := maps.Clone(healthy)
	for i := 1; i <= 3; i++ {
		all[addr(i)] = "UNHEALTHY"
	}
	// Istio 1.30 has no PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS: it drops them.
	autoSent := healthy
	if minorAtLeast(t, harness.IstioRelease(), 31) {
		autoSent = all
	}
	for _, c := range []struct {
		sendUnhealthy, autoSend, global bool // the flag, PILOT_AUTO_SEND_…, PILOT_SEND_…
		want                            map[string]string
	}{
		{false, false, false, healthy},
		{false, true, false, healthy},
		{false, true, true, healthy},
		{true, false, false, healthy},
		{true, true, false, autoSent},
		{true, false, true, all},
	} {
		name := fmt.Sprintf("consulSendUnhealthy=%v,PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS=%v,PILOT_SEND_UNHEALTHY_ENDPOINTS=%v",
			c.sendUnhealthy, c.autoSend, c.global)
		t.Run(name, func(t *testing.T) {
			istiod, err := harness.NewIstiod(t, mesh.Kube, mesh.Consul.URL(), "--consulSendUnhealthy="+strconv.FormatBool(c.sendUnhealthy))
			require.NoError(t, err)
			istiod.Env = append(istiod.Env, "PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS="+strconv.FormatBool(c.autoSend),
				"PILOT_SEND_UNHEALTHY_ENDPOINTS="+strconv.FormatBool(c.global))
			require.NoError(t, istiod.Start())
			cluster := fmt.Sprintf("outbound|%d||%s.service.consul", s.Port, s.Name)
			var got map[string]string
			// istiod is ready once the registry synced: the first answer
			// with the service is what it sends.
			require.Eventually(t, func() bool {
				d, err := harness.ADSDump(istiod.XDSAddr, "default", cluster)
				if err != nil || d.Endpoints[cluster] == nil {
					return false
				}
				got = map[string]string{}
				for _, l := range d.Endpoints[cluster].Endpoints {
					for _, e := range l.LbEndpoints {
						sa := e.GetEndpoint().GetAddress().GetSocketAddress()
						got[fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())] = healthName(e.GetHealthStatus())
					}
				}
				return len(got) > 0
			}, 30*time.Second, 50*time.Millisecond, "istiod sends %s", cluster)
			assert.Equal(t, c.want, got, "EDS for %s", cluster)
			x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
			require.NoError(t, err)
			conn, err := x.Dial(s.Target())
			require.NoError(t, err)
			t.Cleanup(func() { _ = conn.Close() })
			e2e.EventuallyServedBy(t, conn, s.ID(0))
			assert.Equal(t, map[string]int{s.ID(0): 100}, e2e.Counts(conn, 100), "calls go to the passing instance only")
		})
	}
}

// healthName is an EDS health status as docs/mapping.md writes it; UNKNOWN
// (Istio's healthy endpoints) reads HEALTHY, as clients treat it.
func healthName(h core.HealthStatus) string {
	if h == core.HealthStatus_UNKNOWN {
		return "HEALTHY"
	}
	return h.String()
}

// minorAtLeast says whether an Istio release ("1.31.0-rc.0") is 1.<minor> or later.
func minorAtLeast(t *testing.T, release string, minor int) bool {
	t.Helper()
	parts := strings.SplitN(release, ".", 3)
	require.Len(t, parts, 3, "Istio release %q", release)
	m, err := strconv.Atoi(parts[1])
	require.NoError(t, err, "Istio release %q", release)
	return parts[0] != "1" || m >= minor
}
