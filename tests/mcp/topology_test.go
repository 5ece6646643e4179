package mcp

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// A restart of the server: istiod keeps serving the last config it
// received (calls go on while the server is down), and converges on what
// changed in Consul meanwhile once the server is back.
func TestServerRestart(t *testing.T) {
	m, err := harness.StartMCP(t, consul.URL())
	require.NoError(t, err)
	i, err := harness.StartUpstreamIstiod(t, kube, harness.MCPMeshConfig(m.XDSAddr))
	require.NoError(t, err)
	x, err := harness.NewXDSClient(i.XDSAddr, "default")
	require.NoError(t, err)
	s := e2e.NewService(t, local, "restart", 2, e2e.GRPCMeta, nil)
	c, err := x.Dial(s.Target())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	m.Stop()
	s.SetHealth(1, api.HealthCritical)
	s.Add(2, e2e.GRPCMeta, nil)
	// Well past istiod's reconnection attempts: the config it holds stays.
	deadline := time.Now().Add(3 * time.Second)
	calls := 0
	for time.Now().Before(deadline) {
		n := e2e.Counts(c, 20)
		require.Zero(t, n["error"], "calls failed while the server was down: %v", n)
		calls += 20
	}
	t.Logf("%d calls while the server was down, none failed", calls)

	require.NoError(t, m.Start())
	start := time.Now()
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(2))
	t.Logf("server restarted -> istiod's client converged in %v", time.Since(start))
	assertNoRejections(t, m, i)
}

// Two istiods on one server get the same versions; two servers (replicas)
// build the same versions from one Consul, so an istiod moved from one to
// the other behind one address (a Service) rewrites nothing; and the
// service's address is the VIP the in-tree registry gives it.
func TestReplicasAgree(t *testing.T) {
	s := e2e.NewService(t, local, "agree", 3, e2e.GRPCMeta, nil)
	a, err := harness.StartMCP(t, consul.URL())
	require.NoError(t, err)
	b, err := harness.StartMCP(t, consul.URL())
	require.NoError(t, err)
	var current map[string]string
	require.Eventually(t, func() bool {
		current = debugMCP(t, a).versions()
		return current[WorkloadEntryType] != "" && equalMaps(current, debugMCP(t, b).versions()) &&
			equalMaps(current, debugMCP(t, server).versions())
	}, 20*time.Second, 50*time.Millisecond, "replicas of the server build the same versions")

	relay, err := harness.StartRelay(t, []string{a.XDSAddr, b.XDSAddr})
	require.NoError(t, err)
	behind := strings.TrimPrefix(relay.URL, "http://")
	i1, err := harness.StartUpstreamIstiod(t, kube, harness.MCPMeshConfig(behind))
	require.NoError(t, err)
	i2, err := harness.StartUpstreamIstiod(t, kube, harness.MCPMeshConfig(behind))
	require.NoError(t, err)
	acked := func(m *harness.MCP) int {
		n := 0
		for _, c := range debugMCP(t, m).Clients {
			if c.Types[ServiceEntryType].Acked == current[ServiceEntryType] && c.Types[WorkloadEntryType].Acked == current[WorkloadEntryType] {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return acked(a)+acked(b) == 2 }, 20*time.Second, 50*time.Millisecond,
		"both istiods hold the same versions")

	// Whichever server each istiod reached goes away: both move to the other.
	x, err := harness.NewXDSClient(i1.XDSAddr, "default")
	require.NoError(t, err)
	c, err := x.Dial(s.Target())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1), s.ID(2))
	gone, stays := a, b
	if acked(a) == 0 {
		gone, stays = b, a
	}
	t.Logf("versions %v; istiods on the server that goes: %d", current, acked(gone))
	gone.Stop()
	require.Eventually(t, func() bool { return acked(stays) == 2 }, 30*time.Second, 100*time.Millisecond,
		"both istiods reconnected to the remaining server and acknowledged its versions")
	assert.Equal(t, map[string]int{s.ID(0): 1, s.ID(1): 1, s.ID(2): 1}, normalized(e2e.Counts(c, 90)), "served throughout")
	assertNoRejections(t, stays, i1, i2)

	// The in-tree registry (the patched istiod) gives the service the
	// ServiceEntry's address.
	patched, err := harness.StartIstiod(t, kube, consul.URL())
	require.NoError(t, err)
	host := s.Name + ".service.consul"
	vip := registryAddress(t, patched, host)
	t.Logf("%s: VIP %s in-tree", host, vip)
	assert.Equal(t, vip, registryAddress(t, i1, host), "VIP in-tree and over MCP")
	assert.NotEmpty(t, registryAddress(t, i2, host))
	assert.Equal(t, registryAddress(t, i1, host), registryAddress(t, i2, host), "VIP on both istiods")
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// normalized maps every id that answered to 1 (and keeps errors counted).
func normalized(n map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range n {
		if k == "error" {
			out[k] = v
			continue
		}
		out[k] = 1
	}
	return out
}

// registryAddress waits for istiod to give host an address, and returns it.
func registryAddress(t *testing.T, i *harness.Istiod, host string) string {
	t.Helper()
	var addr string
	require.Eventually(t, func() bool {
		addr, _ = i.ServiceAddress(host)
		return addr != "" && addr != "0.0.0.0"
	}, 20*time.Second, 100*time.Millisecond, "%s never in /debug/registryz", host)
	return addr
}

// Start order (upstream's behaviour, which docs/mcp.md tells operators):
// an istiod whose MCP server is not up yet does not start; once the
// server is up, it does.
func TestIstiodNeedsTheServerToStart(t *testing.T) {
	m, err := harness.NewMCP(t, consul.URL())
	require.NoError(t, err)
	i, err := harness.NewUpstreamIstiod(t, kube, harness.MCPMeshConfig(m.XDSAddr))
	require.NoError(t, err)
	i.ReadyTimeout = 20 * time.Second
	err = i.Start()
	require.Error(t, err)
	assert.True(t, i.Exited(), "istiod exits when its config source is down")
	t.Logf("without the server: %v", firstLine(err.Error()))

	require.NoError(t, m.Start())
	require.NoError(t, i.Start())
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// Several Consul clusters behind one server (--consulServerURL
// east=…,west=…): each is its own registry, as in istiod; a service only
// one of them has is served from it, and one both have from both (two
// ServiceEntries of one host, whose endpoints istiod merges, as it merges
// the in-tree registries' shards).
func TestSeveralConsulClusters(t *testing.T) {
	east, err := harness.StartConsul(t)
	require.NoError(t, err)
	west, err := harness.StartConsul(t)
	require.NoError(t, err)
	m, err := harness.StartMCP(t, "east="+east.URL()+",west="+west.URL())
	require.NoError(t, err)
	i, err := harness.StartUpstreamIstiod(t, kube, harness.MCPMeshConfig(m.XDSAddr))
	require.NoError(t, err)
	x, err := harness.NewXDSClient(i.XDSAddr, "default")
	require.NoError(t, err)
	e := e2e.NewService(t, &e2e.Local{ConsulClient: east.Client, XDS: x, Kube: kube}, "only-east", 1, e2e.GRPCMeta, nil)
	w := e2e.NewService(t, &e2e.Local{ConsulClient: west.Client, XDS: x, Kube: kube}, "only-west", 1, e2e.GRPCMeta, nil)
	for _, s := range []*e2e.Service{e, w} {
		c, err := x.Dial(s.Target())
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		e2e.EventuallyServedBy(t, c, s.ID(0))
	}
	shared := e2e.NewService(t, &e2e.Local{ConsulClient: east.Client, XDS: x, Kube: kube}, "shared", 1, e2e.GRPCMeta, nil)
	_, err = harness.StartWorkload(t, "shared-west", e2e.IP(t, 1), shared.Port)
	require.NoError(t, err)
	require.NoError(t, west.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "shared-west", Name: "shared",
		Address: e2e.IP(t, 1), Port: shared.Port, Meta: e2e.GRPCMeta}))
	c, err := x.Dial(shared.Target())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e2e.EventuallyServedBy(t, c, shared.ID(0), "shared-west")

	names := map[string]bool{}
	for _, ty := range debugMCP(t, m).Types {
		for _, n := range ty.Names {
			names[n] = true
		}
	}
	assert.True(t, names["consul/east-only-east"] && names["consul/west-only-west"], "%v", names)
	assertNoRejections(t, m, i)
}
