package mcp

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	mcpserver "github.com/pilot-consul/pilot-consul/mcp"
	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The shared end-to-end cases (tests/e2e), the same code the patched
// istiod passes in tests/integration and in kind, here on the release's
// istiod as shipped, fed by consul-mcp.
func TestSharedCases(t *testing.T) {
	for _, c := range e2e.Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, local) })
	}
	assertNoRejections(t, server, istiod)
}

// mcpz is consul-mcp's /debug/mcpz.
type mcpz struct {
	Ready bool `json:"ready"`
	Types []struct {
		Type      string   `json:"type"`
		Version   string   `json:"version"`
		Resources int      `json:"resources"`
		Names     []string `json:"names"`
	} `json:"types"`
	Skipped map[string]string `json:"skipped"`
	Clients []struct {
		Node  string `json:"node"`
		Types map[string]struct {
			Sent   string `json:"sentVersion"`
			Acked  string `json:"ackedVersion"`
			Pushes int    `json:"pushes"`
			Nacks  int    `json:"nacks"`
		} `json:"types"`
	} `json:"clients"`
	Nacks []struct {
		Message string `json:"message"`
	} `json:"nacks"`
}

func debugMCP(t *testing.T, m *harness.MCP) mcpz {
	t.Helper()
	b, err := m.Debug("/debug/mcpz?names=1")
	require.NoError(t, err)
	var v mcpz
	require.NoError(t, json.Unmarshal(b, &v), "%s", b)
	return v
}

// versions are the server's current version of each type it fills.
func (v mcpz) versions() map[string]string {
	out := map[string]string{}
	for _, t := range v.Types {
		out[t.Type] = t.Version
	}
	return out
}

// assertNoRejections: nothing the server sent was refused, by a NACK or by
// istiod's config store (adsc ACKs what its store then refuses, and logs it).
func assertNoRejections(t *testing.T, m *harness.MCP, istiods ...*harness.Istiod) {
	t.Helper()
	metrics, err := m.Metrics()
	require.NoError(t, err)
	_, nacks := harness.Samples(metrics, "consul_mcp_nacks_total", "")
	assert.Zero(t, nacks, "NACK series exported")
	v := debugMCP(t, m)
	assert.Empty(t, v.Nacks, "NACKs")
	for _, i := range istiods {
		for _, refusal := range []string{"Error adding a new resource", "Error updating an existing resource", "Invalid data"} {
			assert.NotContains(t, i.Log(), refusal, "istiod refused a config the server sent")
		}
	}
}

// A Consul service read through consul-mcp reaches an unpatched istiod's
// clients with the same VIP the in-tree registry gives it, and a health
// flip moves the traffic (the shared HealthFlip case) while the server's
// versions stay a function of the catalog.
func TestHealthAwareAndVersioned(t *testing.T) {
	s := e2e.NewService(t, local, "versioned", 2, e2e.GRPCMeta, nil)
	c := local.Dial(t, s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	before := debugMCP(t, server).versions()
	s.SetHealth(1, api.HealthCritical)
	e2e.WaitUntilGone(t, c, s.ID(1), time.Now())
	flipped := debugMCP(t, server).versions()
	assert.Equal(t, before[ServiceEntryType], flipped[ServiceEntryType], "a health flip changes no ServiceEntry")
	assert.NotEqual(t, before[WorkloadEntryType], flipped[WorkloadEntryType])
	s.SetHealth(1, api.HealthPassing)
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	require.Eventually(t, func() bool { return debugMCP(t, server).versions()[WorkloadEntryType] == before[WorkloadEntryType] },
		10*time.Second, 50*time.Millisecond, "the same catalog, the same version")
}

// The type URLs the server fills, as istiod asks for them.
var (
	ServiceEntryType  = mcpserver.ServiceEntryType
	WorkloadEntryType = mcpserver.WorkloadEntryType
)
