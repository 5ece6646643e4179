package harness

import (
	"context"
	"fmt"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Type URLs of the resources ADSDump fetches.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// Dump is what istiod sends a sidecar-like (Envoy) node: every cluster,
// listener and, for the clusters asked, their endpoints.
type Dump struct {
	Clusters  map[string]*cluster.Cluster
	Listeners map[string]*listener.Listener
	Endpoints map[string]*endpoint.ClusterLoadAssignment
}

// ADSDump opens one ADS stream to istiod as a sidecar in namespace ns and
// returns CDS and LDS, plus EDS for edsClusters.
func ADSDump(xdsAddr, ns string, edsClusters ...string) (*Dump, error) {
	return ADSDumpIn(xdsAddr, ns, "", edsClusters...)
}

// ADSDumpIn is ADSDump for a sidecar in locality region (istiod orders
// endpoints by their locality relative to it); "" is none.
func ADSDumpIn(xdsAddr, ns, region string, edsClusters ...string) (*Dump, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("ads stream: %w", err)
	}
	meta, _ := structpb.NewStruct(map[string]any{
		"NAMESPACE": ns, "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": IstioRelease(), "LABELS": map[string]any{"app": "dump"},
	})
	node := &core.Node{Id: "sidecar~127.0.0.251~dump." + ns + "~" + ns + ".svc.cluster.local", Metadata: meta}
	if region != "" {
		node.Locality = &core.Locality{Region: region}
	}
	fetch := func(typeURL string, names []string) ([]*discovery.DiscoveryResponse, error) {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names}); err != nil {
			return nil, err
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				return nil, fmt.Errorf("ads recv %s: %w", typeURL, err)
			}
			// ACK so istiod does not resend.
			_ = stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce,
				VersionInfo: resp.VersionInfo, ResourceNames: names})
			if resp.TypeUrl == typeURL {
				return []*discovery.DiscoveryResponse{resp}, nil
			}
		}
	}
	d := &Dump{}
	if d.Clusters, err = fetchAll(fetch, ClusterType, nil, func(c *cluster.Cluster) string { return c.Name }); err != nil {
		return nil, err
	}
	d.Endpoints = map[string]*endpoint.ClusterLoadAssignment{}
	if len(edsClusters) > 0 {
		if d.Endpoints, err = fetchAll(fetch, EndpointType, edsClusters,
			func(e *endpoint.ClusterLoadAssignment) string { return e.ClusterName }); err != nil {
			return nil, err
		}
	}
	if d.Listeners, err = fetchAll(fetch, ListenerType, nil, func(l *listener.Listener) string { return l.Name }); err != nil {
		return nil, err
	}
	return d, nil
}

// fetchAll requests one resource type and decodes the answer, keyed by name.
func fetchAll[T any, PT interface {
	*T
	proto.Message
}](fetch func(string, []string) ([]*discovery.DiscoveryResponse, error), typeURL string, names []string,
	key func(PT) string,
) (map[string]PT, error) {
	resps, err := fetch(typeURL, names)
	if err != nil {
		return nil, err
	}
	out := map[string]PT{}
	for _, r := range resps {
		for _, a := range r.Resources {
			m := PT(new(T))
			if err := a.UnmarshalTo(m); err != nil {
				return nil, fmt.Errorf("decode %s: %w", typeURL, err)
			}
			out[key(m)] = m
		}
	}
	return out, nil
}

// EndpointAddrs lists "ip:port" of a ClusterLoadAssignment.
func EndpointAddrs(cla *endpoint.ClusterLoadAssignment) []string {
	var out []string
	if cla == nil {
		return out
	}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}
