package mcp

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	networking "istio.io/api/networking/v1alpha3"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pkg/kube/krt"
)

func serviceEntry(name string, hosts ...string) *networkingclient.ServiceEntry {
	return &networkingclient.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "consul", Labels: map[string]string{"b": "2", "a": "1"}},
		Spec: networking.ServiceEntry{Hosts: hosts, Resolution: networking.ServiceEntry_STATIC,
			Ports: []*networking.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}},
	}
}

func builderOf(ses ...*networkingclient.ServiceEntry) *builder {
	b := newBuilder()
	b.services = append(b.services, krt.NewStaticCollection[*networkingclient.ServiceEntry](alwaysSynced{}, ses))
	b.workloads = append(b.workloads, krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, nil))
	return b
}

type alwaysSynced struct{}

func (alwaysSynced) HasSynced() bool                      { return true }
func (alwaysSynced) WaitUntilSynced(<-chan struct{}) bool { return true }

// What istiod's validation refuses is left out with its reason, never
// sent: istiod's MCP client ACKs everything and its store then drops the
// object with a log line nobody reads.
func TestInvalidObjectsAreLeftOutWithTheirReason(t *testing.T) {
	snap, err := builderOf(serviceEntry("ok", "ok.service.consul"), serviceEntry("nohost")).build()
	require.NoError(t, err)
	assert.Equal(t, []string{"consul/ok"}, snap.types[ServiceEntryType].names)
	require.Contains(t, snap.skipped, "consul/nohost")
	assert.Contains(t, snap.skipped["consul/nohost"], "istiod would refuse ServiceEntry consul/nohost")
	assert.Equal(t, emptyCollection, snap.get("networking.istio.io/v1/VirtualService"), "other Pilot types: one empty answer")
	assert.Nil(t, snap.get("core/v1alpha1/MeshConfig"), "types the server does not know: no answer")
}

// Versions are a function of content alone: two servers (or a restarted
// one) agree, whatever order their collections list objects in, and a
// change moves the version of its type only.
func TestVersionsAreAFunctionOfContent(t *testing.T) {
	one, err := builderOf(serviceEntry("a", "a.service.consul"), serviceEntry("b", "b.service.consul")).build()
	require.NoError(t, err)
	other, err := builderOf(serviceEntry("b", "b.service.consul"), serviceEntry("a", "a.service.consul")).build()
	require.NoError(t, err)
	assert.Equal(t, one.types[ServiceEntryType].version, other.types[ServiceEntryType].version)
	assert.Equal(t, one.types[ServiceEntryType].resources[0].Value, other.types[ServiceEntryType].resources[0].Value,
		"byte for byte (deterministic encoding)")

	changed, err := builderOf(serviceEntry("a", "a.service.consul"), serviceEntry("b", "b2.service.consul")).build()
	require.NoError(t, err)
	assert.NotEqual(t, one.types[ServiceEntryType].version, changed.types[ServiceEntryType].version)
	assert.Equal(t, one.types[WorkloadEntryType].version, changed.types[WorkloadEntryType].version)
}

// An object the registry did not republish is not converted again.
func TestUnchangedObjectsAreNotReconverted(t *testing.T) {
	b := builderOf(serviceEntry("a", "a.service.consul"))
	first, err := b.build()
	require.NoError(t, err)
	second, err := b.build()
	require.NoError(t, err)
	assert.Same(t, first.types[ServiceEntryType].resources[0], second.types[ServiceEntryType].resources[0])
}
