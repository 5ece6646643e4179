package harness

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	xdsgrpc "google.golang.org/grpc/xds" // xDS resolver and balancers

	"github.com/pilot-consul/pilot-consul/tests/e2e/echo"
)

// XDSClient is a proxyless gRPC client: grpc-go's own xDS resolver, talking
// to istiod's plaintext xDS port with node metadata asking for the gRPC
// generator, exactly as a proxyless workload in a mesh would.
type XDSClient struct {
	resolver resolver.Builder
}

// NewXDSClient builds a client whose xDS server is istiod at xdsAddr.
func NewXDSClient(xdsAddr, namespace string) (*XDSClient, error) {
	return NewXDSClientIn(xdsAddr, namespace, "")
}

// NewXDSClientIn is NewXDSClient for a client in locality region (its
// bootstrap's node locality, which istiod's locality load balancing
// orders endpoints by); "" is none.
func NewXDSClientIn(xdsAddr, namespace, region string) (*XDSClient, error) {
	node := map[string]any{
		"id": "sidecar~127.0.0.250~client." + namespace + "~" + namespace + ".svc.cluster.local",
		"metadata": map[string]any{
			"GENERATOR": "grpc", "NAMESPACE": namespace, "CLUSTER_ID": "Kubernetes",
		},
	}
	if region != "" {
		node["locality"] = map[string]any{"region": region}
	}
	bootstrap := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      xdsAddr,
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []any{"xds_v3"},
		}},
		"node": node,
	}
	data, err := json.Marshal(bootstrap)
	if err != nil {
		return nil, err
	}
	r, err := xdsgrpc.NewXDSResolverWithConfigForTesting(data)
	if err != nil {
		return nil, fmt.Errorf("xds resolver: %w", err)
	}
	return &XDSClient{resolver: r}, nil
}

// Conn is one xds:/// channel.
type Conn struct {
	cc *grpc.ClientConn
}

// Dial opens a channel to xds:///<host:port>; it connects lazily.
func (x *XDSClient) Dial(target string) (*Conn, error) {
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(x.resolver))
	if err != nil {
		return nil, fmt.Errorf("dial xds:///%s: %w", target, err)
	}
	return &Conn{cc: cc}, nil
}

// Call makes one call and returns the name of the instance that answered.
func (c *Conn) Call(timeout time.Duration) (string, error) { return echo.Call(c.cc, timeout) }

// Close closes the channel.
func (c *Conn) Close() error { return c.cc.Close() }
