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
	names     []string
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

// builder turns the registries' collections into snapshots, converting only
// objects that changed since the last one (the registry replaces an object
// when it republishes it, so identity tells).
type builder struct {
	services  []krt.Collection[*networkingclient.ServiceEntry]
	workloads []krt.Collection[*networkingclient.WorkloadEntry]
	seen      map[string]converted
	builds    int // snapshots built, for tests of coalescing
}

type converted struct {
	obj    any // the object converted, by identity
	res    *anypb.Any
	digest uint64
	err    error
}

func newBuilder() *builder { return &builder{seen: map[string]converted{}} }

func (b *builder) build() (*snapshot, error) {
	b.builds++
	s := &snapshot{types: map[string]*collection{}, skipped: map[string]string{}}
	next := map[string]converted{}
	var objs []entry
	for _, c := range b.services {
		for _, se := range c.List() {
			objs = append(objs, entry{ServiceEntryType, se, se.ObjectMeta, &se.Spec, collections.ServiceEntry, converted{}})
		}
	}
	for _, c := range b.workloads {
		for _, we := range c.List() {
			objs = append(objs, entry{WorkloadEntryType, we, we.ObjectMeta, &we.Spec, collections.WorkloadEntry, converted{}})
		}
	}
	byType := map[string][]entry{ServiceEntryType: nil, WorkloadEntryType: nil}
	for _, e := range objs {
		key := e.typeURL + "|" + e.meta.Namespace + "/" + e.meta.Name
		cv, ok := b.seen[key]
		if !ok || cv.obj != e.obj {
			cv = convert(e)
			cv.obj = e.obj
		}
		next[key] = cv
		if cv.err != nil {
			s.skipped[e.meta.Namespace+"/"+e.meta.Name] = cv.err.Error()
			continue
		}
		e.converted = cv
		byType[e.typeURL] = append(byType[e.typeURL], e)
	}
	b.seen = next
	for typeURL, es := range byType {
		slices.SortFunc(es, func(a, b entry) int {
			return strings.Compare(a.meta.Namespace+"/"+a.meta.Name, b.meta.Namespace+"/"+b.meta.Name)
		})
		c := &collection{}
		h := fnv.New64a()
		for _, e := range es {
			c.resources = append(c.resources, e.converted.res)
			c.names = append(c.names, e.meta.Namespace+"/"+e.meta.Name)
			c.bytes += len(e.converted.res.Value)
			fmt.Fprintf(h, "%s/%s=%x;", e.meta.Namespace, e.meta.Name, e.converted.digest)
		}
		c.version = fmt.Sprintf("%016x", h.Sum64())
		s.types[typeURL] = c
	}
	return s, nil
}

type entry struct {
	typeURL   string
	obj       any
	meta      metav1.ObjectMeta
	spec      proto.Message
	schema    resource.Schema
	converted converted
}

// convert validates one object as istiod's config store will and wraps
// it. The version is a digest of the resource without it: the same object
// gets the same version on every server.
func convert(e entry) converted {
	cfg := config.Config{
		Meta: config.Meta{GroupVersionKind: e.schema.GroupVersionKind(), Name: e.meta.Name, Namespace: e.meta.Namespace,
			Labels: e.meta.Labels, Annotations: e.meta.Annotations},
		Spec: e.spec,
	}
	if _, err := e.schema.ValidateConfig(cfg); err != nil {
		return converted{err: fmt.Errorf("istiod would refuse %s %s/%s: %w", e.schema.Kind(), e.meta.Namespace, e.meta.Name, err)}
	}
	deterministic := proto.MarshalOptions{Deterministic: true}
	body := &anypb.Any{}
	if err := anypb.MarshalFrom(body, e.spec, deterministic); err != nil {
		return converted{err: fmt.Errorf("encode %s/%s: %w", e.meta.Namespace, e.meta.Name, err)}
	}
	r := &mcpapi.Resource{
		Metadata: &mcpapi.Metadata{Name: e.meta.Namespace + "/" + e.meta.Name, Labels: e.meta.Labels, Annotations: e.meta.Annotations},
		Body:     body,
	}
	b, err := deterministic.Marshal(r)
	if err != nil {
		return converted{err: fmt.Errorf("encode %s/%s: %w", e.meta.Namespace, e.meta.Name, err)}
	}
	h := fnv.New64a()
	_, _ = h.Write(b)
	digest := h.Sum64()
	r.Metadata.Version = fmt.Sprintf("%016x", digest)
	res := &anypb.Any{}
	if err := anypb.MarshalFrom(res, r, deterministic); err != nil {
		return converted{err: fmt.Errorf("encode %s/%s: %w", e.meta.Namespace, e.meta.Name, err)}
	}
	return converted{res: res, digest: digest}
}
