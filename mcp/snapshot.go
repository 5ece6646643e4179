// Package mcp serves the Consul registry's catalog to an istiod nobody
// patched, over MCP-over-xDS (meshConfig.configSources xds://): the
// ServiceEntries and WorkloadEntries that ambient mode gets from the
// in-tree registry, streamed state of the world as istiod's adsc client
// expects. docs/mcp.md has the whole picture.
package mcp

// snapshot.go owns what the server sends: the objects the registries
// publish (consul/ambient.go is the one conversion), each checked with the
// validation istiod's config store runs, wrapped as an mcp.Resource and
// versioned by its content, so two replicas of the server, or a restarted
// one, send the same versions and istiod rewrites nothing it already holds.

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	mcpapi "istio.io/api/mcp/v1alpha1"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	"istio.io/istio/pkg/kube/krt"
)

// Type URLs the server fills. Every other Pilot type istiod asks for is
// answered once, empty: istiod's MCP source reports synced only when each
// type it asked for has had an answer.
var (
	ServiceEntryType  = collections.ServiceEntry.GroupVersionKind().String()
	WorkloadEntryType = collections.WorkloadEntry.GroupVersionKind().String()
)

// collection is one type's state of the world, as sent.
type collection struct {
	version   string
	resources []*anypb.Any
	items     []*item // resources' objects, sorted by name
	bytes     int
}

// snapshot is what every client is brought to; it is never modified once
// published.
type snapshot struct {
	types   map[string]*collection
	skipped map[string]string // namespace/name -> why istiod would refuse it
}

// get returns the type's collection: the served ones, an empty one for the
// other Pilot types, nil for types the server does not know (not answered).
func (s *snapshot) get(typeURL string) *collection {
	if c, ok := s.types[typeURL]; ok {
		return c
	}
	if isPilotType(typeURL) {
		return emptyCollection
	}
	return nil
}

var emptyCollection = &collection{version: "empty"}

func isPilotType(typeURL string) bool {
	parts := strings.SplitN(typeURL, "/", 3)
	if len(parts) != 3 {
		return false
	}
	_, ok := collections.Pilot.FindByGroupVersionKind(config.GroupVersionKind{Group: parts[0], Version: parts[1], Kind: parts[2]})
	return ok
}

// builder turns the registries' collections into snapshots. It keeps each
// type's objects converted and sorted between builds and converts only the
// objects that changed: the registry replaces an object when it republishes
// it, so identity tells. A build after one change costs a walk over the
// collections and a copy of the sorted list, not a conversion or a sort of
// 100,000 objects (BenchmarkRebuildAfterOneChange); a first build sorts
// once (BenchmarkFirstBuild).
type builder struct {
	services  []krt.Collection[*networkingclient.ServiceEntry]
	workloads []krt.Collection[*networkingclient.WorkloadEntry]
	types     map[string]*typeItems
	builds    int // snapshots built, for tests of coalescing
}

// typeItems is one type's converted objects.
type typeItems struct {
	byObj   map[any]*item // by object identity
	sorted  []*item       // the valid ones, by name
	added   []*item       // valid ones new in this build, merged into sorted at its end
	version uint64        // XOR of the valid items' digests: order-free, updated per change
	bytes   int
}

// item is one object as sent (or, with err, why it is not).
type item struct {
	name   string // namespace/name
	res    *anypb.Any
	digest uint64 // of the resource and its name
	err    error
	gen    int // the build that last saw it
}

func newBuilder() *builder {
	return &builder{types: map[string]*typeItems{
		ServiceEntryType:  {byObj: map[any]*item{}},
		WorkloadEntryType: {byObj: map[any]*item{}},
	}}
}

func (b *builder) build() *snapshot {
	b.builds++
	s := &snapshot{types: map[string]*collection{}, skipped: map[string]string{}}
	for _, c := range b.services {
		for _, se := range c.List() {
			b.see(entry{typeURL: ServiceEntryType, obj: se, meta: &se.ObjectMeta, spec: &se.Spec, schema: collections.ServiceEntry})
		}
	}
	for _, c := range b.workloads {
		for _, we := range c.List() {
			b.see(entry{typeURL: WorkloadEntryType, obj: we, meta: &we.ObjectMeta, spec: &we.Spec, schema: collections.WorkloadEntry})
		}
	}
	for typeURL, t := range b.types {
		stale := false
		for obj, it := range t.byObj {
			switch {
			case it.gen != b.builds:
				delete(t.byObj, obj)
				if it.err == nil {
					t.version ^= it.digest
					t.bytes -= len(it.res.Value)
					stale = true
				}
			case it.err != nil:
				s.skipped[it.name] = it.err.Error()
			}
		}
		if stale {
			t.sorted = slices.DeleteFunc(t.sorted, func(it *item) bool { return it.gen != b.builds })
		}
		t.merge()
		c := &collection{version: fmt.Sprintf("%016x", t.version), items: slices.Clone(t.sorted),
			resources: make([]*anypb.Any, len(t.sorted)), bytes: t.bytes}
		for i, it := range t.sorted {
			c.resources[i] = it.res
		}
		s.types[typeURL] = c
	}
	return s
}

// see notes one object of the current build, converting it if it is new.
func (b *builder) see(e entry) {
	t := b.types[e.typeURL]
	if it, ok := t.byObj[e.obj]; ok {
		it.gen = b.builds
		return
	}
	e.name = e.meta.Namespace + "/" + e.meta.Name
	it := convert(e)
	it.gen = b.builds
	t.byObj[e.obj] = it
	if it.err == nil {
		t.version ^= it.digest
		t.bytes += len(it.res.Value)
		t.added = append(t.added, it)
	}
}

// merge sorts the build's new objects and merges them into the sorted
// list in one pass: inserting them one by one moved half the list for
// each, quadratic in a first build of 100,000 objects.
func (t *typeItems) merge() {
	if len(t.added) == 0 {
		return
	}
	byName := func(x, y *item) int { return strings.Compare(x.name, y.name) }
	slices.SortStableFunc(t.added, byName)
	merged := make([]*item, 0, len(t.sorted)+len(t.added))
	old, added := t.sorted, t.added
	for len(old) > 0 && len(added) > 0 {
		if byName(added[0], old[0]) < 0 {
			merged, added = append(merged, added[0]), added[1:]
		} else {
			merged, old = append(merged, old[0]), old[1:]
		}
	}
	t.sorted = append(append(merged, old...), added...)
	// Dropped, not truncated: its backing array would keep every object of
	// the first build alive after the registry removed it.
	t.added = nil
}

type entry struct {
	typeURL string
	name    string // namespace/name
	obj     any
	meta    *metav1.ObjectMeta
	spec    proto.Message
	schema  resource.Schema
}

// convert validates one object as istiod's config store will and wraps
// it. The version is a digest of the resource without it: the same object
// gets the same version on every server.
func convert(e entry) *item {
	cfg := config.Config{
		Meta: config.Meta{GroupVersionKind: e.schema.GroupVersionKind(), Name: e.meta.Name, Namespace: e.meta.Namespace,
			Labels: e.meta.Labels, Annotations: e.meta.Annotations},
		Spec: e.spec,
	}
	if _, err := e.schema.ValidateConfig(cfg); err != nil {
		return &item{name: e.name, err: fmt.Errorf("istiod would refuse %s %s: %w", e.schema.Kind(), e.name, err)}
	}
	deterministic := proto.MarshalOptions{Deterministic: true}
	body := &anypb.Any{}
	if err := anypb.MarshalFrom(body, e.spec, deterministic); err != nil {
		return &item{name: e.name, err: fmt.Errorf("encode %s: %w", e.name, err)}
	}
	r := &mcpapi.Resource{
		Metadata: &mcpapi.Metadata{Name: e.name, Labels: e.meta.Labels, Annotations: e.meta.Annotations},
		Body:     body,
	}
	b, err := deterministic.Marshal(r)
	if err != nil {
		return &item{name: e.name, err: fmt.Errorf("encode %s: %w", e.name, err)}
	}
	h := fnv.New64a()
	_, _ = h.Write(b)
	r.Metadata.Version = fmt.Sprintf("%016x", h.Sum64())
	res := &anypb.Any{}
	if err := anypb.MarshalFrom(res, r, deterministic); err != nil {
		return &item{name: e.name, err: fmt.Errorf("encode %s: %w", e.name, err)}
	}
	// The type's version XORs these, so the name goes in too: two objects
	// swapping contents must not cancel out.
	h.Reset()
	_, _ = h.Write([]byte(e.name))
	_, _ = h.Write(res.Value)
	return &item{name: e.name, res: res, digest: h.Sum64()}
}
