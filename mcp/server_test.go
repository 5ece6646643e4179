package mcp

import (
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"

	"istio.io/istio/pkg/kube/krt"
)

// A burst of changes is one rebuild per debounce window, and a steady
// stream of them one per Max: state of the world resends whole
// collections, so this is what bounds the cost of a busy Consul.
func TestChangesAreCoalesced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stop := make(chan struct{}) // ends the collections' handler goroutines
		defer close(stop)
		ses := krt.NewStaticCollection[*networkingclient.ServiceEntry](alwaysSynced{}, nil, krt.WithStop(stop))
		wes := krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, nil, krt.WithStop(stop))
		s := NewServer(func() bool { return true }, Debounce{Quiet: 100 * time.Millisecond, Max: time.Second}, DefaultLimits)
		s.Add(ses, wes)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go s.Run(ctx)
		synctest.Wait()
		require.Equal(t, 1, s.builder.builds, "the first snapshot once ready")

		for i := range 5 { // a burst: 5 changes 10 ms apart
			ses.UpdateObject(serviceEntry("burst", "burst.service.consul", "b"+string(rune('0'+i))+".example"))
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		assert.Equal(t, 2, s.builder.builds, "a burst is one rebuild")

		for i := range 300 { // 3 s of a change every 10 ms: never quiet
			ses.UpdateObject(serviceEntry("steady", "steady.service.consul", "s"+string(rune('0'+i%10))+".example"))
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		assert.InDelta(t, 2+3, s.builder.builds, 1, "one rebuild per second while changes never pause")
		cancel()
	})
}

// The protocol, with real gRPC streams: any number of clients, each with
// its own nonces and versions per type; a first request subscribes
// whatever its nonce (istiod's puts the time there); an ACK of an old
// nonce changes nothing; a NACK is counted and shown; a change reaches
// every subscribed client.
func TestProtocol(t *testing.T) {
	srv := serve(t)
	s := srv.s
	open := func(node string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		return srv.open(t, &discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: ServiceEntryType,
			ResponseNonce: "2026-11-30 14:00:00 +0000 UTC"})
	}
	one, two := open("one"), open("two")
	r1, err := one.Recv()
	require.NoError(t, err)
	r2, err := two.Recv()
	require.NoError(t, err)
	assert.Len(t, r1.Resources, 1)
	assert.Equal(t, r1.VersionInfo, r2.VersionInfo, "one state, one version")

	// two NACKs, one ACKs; then a stale ACK of a nonce never sent.
	require.NoError(t, two.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType, ResponseNonce: r2.Nonce,
		VersionInfo: "", ErrorDetail: &status.Status{Message: "refused for the test"}}))
	require.NoError(t, one.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType, ResponseNonce: r1.Nonce, VersionInfo: r1.VersionInfo}))
	require.NoError(t, one.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType, ResponseNonce: "999", VersionInfo: "stale"}))
	byNode := func(v debugView) map[string]typeSeen {
		out := map[string]typeSeen{}
		for _, c := range v.Clients {
			out[c.Node] = c.Types[ServiceEntryType]
		}
		return out
	}
	require.Eventually(t, func() bool {
		v := debug(t, s)
		return len(v.Nacks) == 1 && byNode(v)["one"].Acked == r1.VersionInfo
	}, 5*time.Second, 5*time.Millisecond)
	v := debug(t, s)
	assert.Equal(t, "refused for the test", v.Nacks[0].Message)
	assert.Equal(t, 1, byNode(v)["two"].Nacks)
	assert.Equal(t, 0, byNode(v)["one"].Nacks)
	assert.Empty(t, byNode(v)["two"].Acked, "a NACK acknowledges nothing")
	assert.Contains(t, v.Nacks[0].Client, "two")

	srv.ses.UpdateObject(serviceEntry("b", "b.service.consul"))
	for _, st := range []discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient{one, two} {
		r, err := st.Recv()
		require.NoError(t, err)
		assert.Len(t, r.Resources, 2, "the whole collection")
		assert.NotEqual(t, r1.VersionInfo, r.VersionInfo)
		assert.NotEqual(t, r1.Nonce, r.Nonce)
	}
}

func debug(t *testing.T, s *Server) debugView {
	t.Helper()
	w := httptest.NewRecorder()
	s.DebugHandler(w, httptest.NewRequest("GET", "/debug/mcpz", nil))
	var v debugView
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &v))
	return v
}

// WorkloadEntries reach istiod before ServiceEntries, whatever order it
// asks in (istiod as shipped recomputes every ServiceEntry for each
// WorkloadEntry that arrives after it); a client that asks for
// ServiceEntries only still gets them.
func TestWorkloadEntriesFirst(t *testing.T) {
	v := serve(t)
	open := func(types ...string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		var reqs []*discovery.DiscoveryRequest
		for _, ty := range types {
			reqs = append(reqs, &discovery.DiscoveryRequest{TypeUrl: ty})
		}
		return v.open(t, reqs...)
	}

	both := open(ServiceEntryType, WorkloadEntryType)
	var order []string
	for range 2 {
		r, err := both.Recv()
		require.NoError(t, err)
		order = append(order, r.TypeUrl)
	}
	assert.Equal(t, []string{WorkloadEntryType, ServiceEntryType}, order)

	// It waits for a WorkloadEntry subscription a moment, then sends
	// anyway: the answer comes, and not before that moment.
	start := time.Now() // before the request: the server's wait starts after it
	only := open(ServiceEntryType)
	got := make(chan *discovery.DiscoveryResponse, 1)
	go func() {
		r, err := only.Recv()
		assert.NoError(t, err)
		got <- r
	}()
	select {
	case r := <-got:
		require.NotNil(t, r)
		assert.Equal(t, ServiceEntryType, r.TypeUrl)
		assert.GreaterOrEqual(t, time.Since(start), entriesFirstWait, "it waited for WorkloadEntries first")
	case <-time.After(30 * time.Second):
		t.Fatal("a client that asks for ServiceEntries only never got them")
	}
}

// served runs a server over ses (one ServiceEntry, "a") on a real gRPC
// listener until the test ends; open starts a stream to it and sends the
// requests given.
type served struct {
	ses krt.StaticCollection[*networkingclient.ServiceEntry]
	s   *Server
	lis net.Listener
}

func serve(t *testing.T) *served {
	t.Helper()
	return serveWith(t, DefaultLimits)
}

func serveWith(t *testing.T, limits Limits) *served {
	t.Helper()
	ses := krt.NewStaticCollection[*networkingclient.ServiceEntry](alwaysSynced{}, nil)
	wes := krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, nil)
	ses.UpdateObject(serviceEntry("a", "a.service.consul"))
	s := NewServer(func() bool { return true }, Debounce{Quiet: 10 * time.Millisecond, Max: 100 * time.Millisecond}, limits)
	s.Add(ses, wes)
	go s.Run(t.Context())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer(GRPCOptions()...)
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	require.Eventually(t, s.Ready, 5*time.Second, 5*time.Millisecond)
	return &served{ses: ses, s: s, lis: lis}
}

func (v *served) open(t *testing.T, reqs ...*discovery.DiscoveryRequest) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	return v.openCtx(t, t.Context(), reqs...)
}
