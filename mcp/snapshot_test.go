package mcp

import (
	"fmt"
	"math/rand/v2"
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
	snap := builderOf(serviceEntry("ok", "ok.service.consul"), serviceEntry("nohost")).build()
	require.Len(t, snap.types[ServiceEntryType].items, 1)
	assert.Equal(t, "consul/ok", snap.types[ServiceEntryType].items[0].name)
	require.Contains(t, snap.skipped, "consul/nohost")
	assert.Contains(t, snap.skipped["consul/nohost"], "istiod would refuse ServiceEntry consul/nohost")
	assert.Equal(t, emptyCollection, snap.get("networking.istio.io/v1/VirtualService"), "other Pilot types: one empty answer")
	assert.Nil(t, snap.get("core/v1alpha1/MeshConfig"), "types the server does not know: no answer")
}

// Versions are a function of content alone: two servers (or a restarted
// one) agree, whatever order their collections list objects in, and a
// change moves the version of its type only.
func TestVersionsAreAFunctionOfContent(t *testing.T) {
	one := builderOf(serviceEntry("a", "a.service.consul"), serviceEntry("b", "b.service.consul")).build()
	other := builderOf(serviceEntry("b", "b.service.consul"), serviceEntry("a", "a.service.consul")).build()
	assert.Equal(t, one.types[ServiceEntryType].version, other.types[ServiceEntryType].version)
	assert.Equal(t, one.types[ServiceEntryType].resources[0].Value, other.types[ServiceEntryType].resources[0].Value,
		"byte for byte (deterministic encoding)")

	changed := builderOf(serviceEntry("a", "a.service.consul"), serviceEntry("b", "b2.service.consul")).build()
	assert.NotEqual(t, one.types[ServiceEntryType].version, changed.types[ServiceEntryType].version)
	assert.Equal(t, one.types[WorkloadEntryType].version, changed.types[WorkloadEntryType].version)
}

// An object the registry did not republish is not converted again.
func TestUnchangedObjectsAreNotReconverted(t *testing.T) {
	b := builderOf(serviceEntry("a", "a.service.consul"))
	first := b.build()
	second := b.build()
	assert.Same(t, first.types[ServiceEntryType].resources[0], second.types[ServiceEntryType].resources[0])
}

// workloadEntries is 10,000 services × 10 instances.
func workloadEntries() []*networkingclient.WorkloadEntry {
	wes := make([]*networkingclient.WorkloadEntry, 0, 100_000)
	for i := range 100_000 {
		wes = append(wes, &networkingclient.WorkloadEntry{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("consul-s%d-%d", i/10, i%10), Namespace: "consul",
				Labels: map[string]string{"consul.pilot-consul.io/service": fmt.Sprintf("consul-s%d", i/10)}},
			Spec: networking.WorkloadEntry{Address: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Ports: map[string]uint32{"http": 8080}},
		})
	}
	return wes
}

// A rebuild after one WorkloadEntry changed, at 10,000 services × 10: what
// every coalesced push costs the server before it sends.
func BenchmarkRebuildAfterOneChange(b *testing.B) {
	wes := workloadEntries()
	bl := newBuilder()
	col := krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, wes)
	bl.workloads = append(bl.workloads, col)
	bl.build()
	b.ResetTimer()
	for i := range b.N {
		we := wes[i%len(wes)].DeepCopy()
		we.Spec.Weight = uint32(i%7 + 1)
		col.UpdateObject(we)
		bl.build()
	}
}

// The first build at 10,000 services × 10, objects listed in no order:
// what the server costs before istiod gets anything.
func BenchmarkFirstBuild(b *testing.B) {
	wes := workloadEntries()
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(wes), func(i, j int) { wes[i], wes[j] = wes[j], wes[i] })
	col := krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, wes)
	for b.Loop() {
		bl := newBuilder()
		bl.workloads = append(bl.workloads, col)
		bl.build()
	}
}

// The incremental builder (kept state, XOR versions, sorted inserts) always
// builds what a fresh one builds from the same objects: random adds,
// republications (same content, new object), changes and deletions.
func TestIncrementalBuildEqualsFromScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	col := krt.NewStaticCollection[*networkingclient.ServiceEntry](alwaysSynced{}, nil)
	b := newBuilder()
	b.services = append(b.services, col)
	b.workloads = append(b.workloads, krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, nil))
	for step := range 300 {
		name := fmt.Sprintf("s%d", rng.IntN(40))
		switch rng.IntN(4) {
		case 0:
			col.DeleteObject("consul/" + name)
		case 1: // invalid: no host
			col.UpdateObject(serviceEntry(name))
		default:
			col.UpdateObject(serviceEntry(name, fmt.Sprintf("%s-%d.service.consul", name, rng.IntN(3))))
		}
		got := b.build()
		fresh := newBuilder()
		fresh.services, fresh.workloads = b.services, b.workloads
		want := fresh.build()
		g, w := got.types[ServiceEntryType], want.types[ServiceEntryType]
		require.Equal(t, w.version, g.version, "step %d", step)
		require.Equal(t, w.bytes, g.bytes, "step %d", step)
		require.Equal(t, len(w.resources), len(g.resources), "step %d", step)
		for i := range w.resources {
			require.Equal(t, w.items[i].name, g.items[i].name, "step %d", step)
			require.Equal(t, w.resources[i].Value, g.resources[i].Value, "step %d", step)
		}
		require.Equal(t, want.skipped, got.skipped, "step %d", step)
	}
}
