package bench

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

const (
	cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ldsType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	rdsType = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	edsType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Kind is the node type an xDS watcher presents to istiod.
type Kind string

const (
	// Sidecar asks like Envoy: wildcard CDS and LDS, then EDS for every EDS
	// cluster and RDS for every route the listeners name.
	Sidecar Kind = "sidecar"
	// Proxyless asks like a gRPC client with GENERATOR=grpc: named LDS, CDS
	// and EDS for every service.
	Proxyless Kind = "grpc"
)

// Watcher is one ADS client subscribed to every service. It reports each
// ClusterLoadAssignment it receives, with its arrival time, to a Tracker.
type Watcher struct {
	id      int
	kind    Kind
	data    Dataset
	tracker *Tracker
	stream  discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node    *core.Node
	subs    map[string][]string // type URL -> names subscribed (nil: wildcard)
	last    map[string]*discovery.DiscoveryResponse
}

// Watch connects watcher id to istiod and runs until ctx ends. The returned
// channel yields the error that ended the stream (nil after ctx ends).
func Watch(ctx context.Context, xdsAddr string, id int, kind Kind, data Dataset, t *Tracker) (<-chan error, error) {
	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A 10,000-service CDS answer is tens of MB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return nil, err
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		cc.Close()
		return nil, fmt.Errorf("watcher %d: ads stream: %w", id, err)
	}
	meta := map[string]any{"NAMESPACE": "default", "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": harness.IstioRelease(),
		"LABELS": map[string]any{"app": "bench"}}
	if kind == Proxyless {
		meta["GENERATOR"] = "grpc"
	}
	m, _ := structpb.NewStruct(meta)
	w := &Watcher{id: id, kind: kind, data: data, tracker: t, stream: stream,
		node: &core.Node{Id: fmt.Sprintf("sidecar~127.0.1.%d~bench-%d.default~default.svc.cluster.local", id+1, id), Metadata: m},
		subs: map[string][]string{}, last: map[string]*discovery.DiscoveryResponse{}}
	done := make(chan error, 1)
	go func() {
		defer cc.Close()
		err := w.run()
		if ctx.Err() != nil {
			err = nil
		}
		done <- err
	}()
	return done, nil
}

// WatchAll starts n watchers with ids first.., alternating sidecar-like
// (even ids) and proxyless (odd ids); the channels report each one's end.
func WatchAll(ctx context.Context, xdsAddr string, first, n int, data Dataset, t *Tracker) ([]<-chan error, error) {
	var ended []<-chan error
	for w := first; w < first+n; w++ {
		kind := Sidecar
		if w%2 == 1 {
			kind = Proxyless
		}
		done, err := Watch(ctx, xdsAddr, w, kind, data, t)
		if err != nil {
			return nil, err
		}
		ended = append(ended, done)
	}
	return ended, nil
}

// startBackends starts the real Consul and kube-apiserver a run measures against.
func startBackends(env harness.Env, configure ...func(*harness.ConsulConfig)) (*harness.Consul, *harness.Kube, error) {
	consul, err := startConsul(env, configure...)
	if err != nil {
		return nil, nil, err
	}
	kube, err := harness.StartKube(env)
	if err != nil {
		return nil, nil, err
	}
	return consul, kube, nil
}

func (w *Watcher) run() error {
	first := []string{cdsType, ldsType}
	if w.kind == Proxyless {
		w.subs[ldsType] = w.data.Listeners()
		w.subs[cdsType] = w.data.Clusters()
		w.subs[edsType] = w.data.Clusters()
		first = append(first, edsType)
	}
	for _, t := range first {
		if err := w.send(t); err != nil {
			return err
		}
	}
	for {
		resp, err := w.stream.Recv()
		if err != nil {
			return fmt.Errorf("watcher %d: %w", w.id, err)
		}
		at := time.Now()
		w.last[resp.TypeUrl] = resp
		if err := w.send(resp.TypeUrl); err != nil { // ACK
			return err
		}
		switch resp.TypeUrl {
		case edsType:
			for _, a := range resp.Resources {
				cla := &endpoint.ClusterLoadAssignment{}
				if err := a.UnmarshalTo(cla); err != nil {
					return fmt.Errorf("watcher %d: decode endpoints: %w", w.id, err)
				}
				w.tracker.observe(w.id, cla, at)
			}
		case cdsType:
			if w.kind == Sidecar {
				if err := w.follow(edsType, resp, edsClusters); err != nil {
					return err
				}
			}
		case ldsType:
			if w.kind == Sidecar {
				if err := w.follow(rdsType, resp, routeNames); err != nil {
					return err
				}
			}
		}
	}
}

// follow subscribes typeURL to the names a CDS or LDS answer refers to, as
// Envoy does, when they changed.
func (w *Watcher) follow(typeURL string, resp *discovery.DiscoveryResponse, names func(*discovery.DiscoveryResponse) ([]string, error)) error {
	n, err := names(resp)
	if err != nil {
		return fmt.Errorf("watcher %d: %w", w.id, err)
	}
	slices.Sort(n)
	if _, subscribed := w.subs[typeURL]; subscribed && slices.Equal(n, w.subs[typeURL]) {
		return nil
	}
	w.subs[typeURL] = n
	return w.send(typeURL)
}

// send (re)states the subscription for typeURL, acknowledging its last answer.
func (w *Watcher) send(typeURL string) error {
	req := &discovery.DiscoveryRequest{Node: w.node, TypeUrl: typeURL, ResourceNames: w.subs[typeURL]}
	if r := w.last[typeURL]; r != nil {
		req.VersionInfo, req.ResponseNonce = r.VersionInfo, r.Nonce
	}
	if err := w.stream.Send(req); err != nil {
		return fmt.Errorf("watcher %d: send %s: %w", w.id, typeURL, err)
	}
	return nil
}

func edsClusters(resp *discovery.DiscoveryResponse) ([]string, error) {
	var out []string
	for _, a := range resp.Resources {
		c := &cluster.Cluster{}
		if err := a.UnmarshalTo(c); err != nil {
			return nil, fmt.Errorf("decode cluster: %w", err)
		}
		if c.GetType() == cluster.Cluster_EDS {
			out = append(out, c.Name)
		}
	}
	return out, nil
}

func routeNames(resp *discovery.DiscoveryResponse) ([]string, error) {
	seen := map[string]bool{}
	for _, a := range resp.Resources {
		l := &listener.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			return nil, fmt.Errorf("decode listener: %w", err)
		}
		chains := append(slices.Clone(l.FilterChains), l.DefaultFilterChain)
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				m := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(m) != nil {
					continue // not an HTTP connection manager
				}
				if n := m.GetRds().GetRouteConfigName(); n != "" {
					seen[n] = true
				}
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	return out, nil
}

// startConsul starts the Consul a run measures: a single server with its
// data directory, as production runs, not a -dev agent, which indents every
// JSON answer (agent/http.go marshalJSON), inflating the bytes, Consul's
// CPU and istiod's decoding that the bench reports per change. configure
// adds to that.
func startConsul(env harness.Env, configure ...func(*harness.ConsulConfig)) (*harness.Consul, error) {
	consul, err := harness.StartConsul(env, append([]func(*harness.ConsulConfig){func(c *harness.ConsulConfig) {
		c.Server, c.EnableDebug = true, true
	}}, configure...)...)
	if err != nil {
		return nil, err
	}
	b, err := consul.DebugTimeout("/v1/catalog/services", 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	if bytes.Contains(b, []byte("\n ")) {
		return nil, fmt.Errorf("consul answers indented JSON (a -dev agent?): the bench would overstate what a change costs")
	}
	return consul, nil
}
