package mcp

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"

	"istio.io/istio/pkg/kube/krt"
)

const virtualServiceType = "networking.istio.io/v1/VirtualService"

// recvUntil reads responses until one of typeURL arrives, counting the
// others by type. Responses on a stream keep the order of the requests
// that caused them, so a request for a type sent last is a marker: when
// its answer comes, every request before it has been handled.
func recvUntil(t *testing.T, st discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, typeURL string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for {
		r, err := st.Recv()
		require.NoError(t, err)
		if r.TypeUrl == typeURL {
			return seen
		}
		seen[r.TypeUrl]++
	}
}

// Defect (issue #38): a re-subscription (no nonce, for a type the stream
// has) reset the stream's version and resent the whole collection, so a
// client re-subscribing in a loop had the server send the catalog in a
// loop (hundreds of MB at 10,000 services × 10). Now a type is resent at
// most once per ResendEvery; a change still reaches the stream at once.
func TestResubscriptionsAreSpaced(t *testing.T) {
	v := serveWith(t, Limits{StreamsPerPeer: 4, ResendEvery: time.Hour})
	st := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType}, &discovery.DiscoveryRequest{TypeUrl: ServiceEntryType})
	first := recvUntil(t, st, ServiceEntryType)
	require.Equal(t, map[string]int{WorkloadEntryType: 1}, first)

	for range 50 {
		require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}))
	}
	require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: virtualServiceType}))
	assert.Equal(t, map[string]int{ServiceEntryType: 1}, recvUntil(t, st, virtualServiceType),
		"50 re-subscriptions: one resend, the others wait for ResendEvery")

	v.ses.UpdateObject(serviceEntry("b", "b.service.consul"))
	r, err := st.Recv()
	require.NoError(t, err)
	assert.Equal(t, ServiceEntryType, r.TypeUrl)
	assert.Len(t, r.Resources, 2, "a change is not held back by the spacing")
}

// The re-subscriptions held back are served once ResendEvery has passed,
// in one response, without any change to bring it.
func TestAHeldBackResubscriptionIsServed(t *testing.T) {
	const every = 300 * time.Millisecond
	v := serveWith(t, Limits{StreamsPerPeer: 4, ResendEvery: every})
	st := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType}, &discovery.DiscoveryRequest{TypeUrl: ServiceEntryType})
	recvUntil(t, st, ServiceEntryType)
	require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}))
	r, err := st.Recv()
	require.NoError(t, err)
	require.Equal(t, ServiceEntryType, r.TypeUrl, "the first re-subscription is answered at once")
	answered := time.Now()
	for range 5 {
		require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}))
	}
	r, err = st.Recv()
	require.NoError(t, err)
	assert.Equal(t, ServiceEntryType, r.TypeUrl)
	assert.GreaterOrEqual(t, time.Since(answered), every-10*time.Millisecond, "held back until ResendEvery passed")
	require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: virtualServiceType}))
	assert.Empty(t, recvUntil(t, st, virtualServiceType), "the five held back were one response")
}

// A type the server does not know is neither answered nor kept: naming
// types by the thousand does not grow a stream's state.
func TestUnknownTypesAreNotKept(t *testing.T) {
	v := serve(t)
	st := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType})
	recvUntil(t, st, WorkloadEntryType)
	for i := range 1000 {
		require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: "example.com/v1/Made" + strings.Repeat("x", i%7)}))
	}
	require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: virtualServiceType}))
	assert.Empty(t, recvUntil(t, st, virtualServiceType), "no answer for an unknown type")
	got := debug(t, v.s)
	require.Len(t, got.Clients, 1)
	assert.Len(t, got.Clients[0].Types, 2, "WorkloadEntries and VirtualServices only")
}

// Defect (issue #38): nothing bounded the streams a client held. Past
// StreamsPerPeer from one address a stream is refused, saying why, and a
// closed one frees its place.
func TestStreamsPerPeerAreBounded(t *testing.T) {
	v := serveWith(t, Limits{StreamsPerPeer: 3, ResendEvery: time.Second})
	var cancels []context.CancelFunc
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		cancels = append(cancels, cancel)
		st := v.openCtx(t, ctx, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType})
		recvUntil(t, st, WorkloadEntryType)
	}
	over := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType})
	_, err := over.Recv()
	require.Error(t, err)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err))
	assert.Contains(t, status.Convert(err).Message(), "--maxStreamsPerPeer")

	cancels[0]()
	require.Eventually(t, func() bool { return len(debug(t, v.s).Clients) == 2 }, 10*time.Second, 5*time.Millisecond)
	again := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType})
	recvUntil(t, again, WorkloadEntryType)
}

// Defect (issue #38): a request could be as large as gRPC's default
// (4 MiB), and a NACK's message was kept whole for /debug/mcpz. A request
// past maxRequestBytes ends its stream; a NACK's message is kept cut.
func TestRequestSizeIsBounded(t *testing.T) {
	v := serve(t)
	big := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType,
		ErrorDetail: &rpcstatus.Status{Message: strings.Repeat("x", 2<<20)}})
	_, err := big.Recv()
	require.Error(t, err)
	assert.Equal(t, codes.ResourceExhausted, status.Code(err))

	st := v.open(t, &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType})
	r, err := st.Recv()
	require.NoError(t, err, "the server goes on serving")
	require.NoError(t, st.Send(&discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType, ResponseNonce: r.Nonce,
		ErrorDetail: &rpcstatus.Status{Message: strings.Repeat("y", 100<<10)}}))
	require.Eventually(t, func() bool { return len(debug(t, v.s).Nacks) == 1 }, 10*time.Second, 5*time.Millisecond)
	assert.LessOrEqual(t, len(debug(t, v.s).Nacks[0].Message), maxNackMessage+len("…(truncated)"))
}

func (v *served) openCtx(t *testing.T, ctx context.Context, reqs ...*discovery.DiscoveryRequest) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	cc, err := grpc.NewClient(v.lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = cc.Close() })
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	require.NoError(t, err)
	for _, r := range reqs {
		require.NoError(t, st.Send(r))
	}
	return st
}

// The spacing holds over a simulated hour of a client re-subscribing ten
// times a second: one resend per ResendEvery, each window's held-back
// re-subscriptions served at its end, none lost.
func TestResendSpacingOverAnHour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stop := make(chan struct{})
		defer close(stop)
		ses := krt.NewStaticCollection[*networkingclient.ServiceEntry](alwaysSynced{}, nil, krt.WithStop(stop))
		wes := krt.NewStaticCollection[*networkingclient.WorkloadEntry](alwaysSynced{}, nil, krt.WithStop(stop))
		ses.UpdateObject(serviceEntry("a", "a.service.consul"))
		s := NewServer(func() bool { return true }, Debounce{Quiet: 10 * time.Millisecond, Max: 100 * time.Millisecond}, DefaultLimits)
		s.Add(ses, wes)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go s.Run(ctx)
		synctest.Wait()

		st := &memStream{ctx: ctx, reqs: make(chan *discovery.DiscoveryRequest), sent: map[string]int{}}
		done := make(chan error, 1)
		go func() { done <- s.StreamAggregatedResources(st) }()
		st.reqs <- &discovery.DiscoveryRequest{TypeUrl: WorkloadEntryType}
		st.reqs <- &discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}
		synctest.Wait()
		require.Equal(t, 1, st.count(ServiceEntryType))

		const hour = time.Hour
		for range hour / (100 * time.Millisecond) {
			st.reqs <- &discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(DefaultLimits.ResendEvery)
		synctest.Wait()
		windows := int(hour / DefaultLimits.ResendEvery)
		assert.InDelta(t, 1+windows, st.count(ServiceEntryType), 2,
			"36,000 re-subscriptions in an hour: one resend per %v", DefaultLimits.ResendEvery)
		cancel()
		<-done
	})
}

// memStream is one ADS stream in memory, for simulated time (a real gRPC
// stream's network I/O cannot run inside a synctest bubble).
type memStream struct {
	grpc.ServerStream
	ctx  context.Context
	reqs chan *discovery.DiscoveryRequest

	mu   sync.Mutex
	sent map[string]int
}

func (m *memStream) Context() context.Context { return m.ctx }

func (m *memStream) Recv() (*discovery.DiscoveryRequest, error) {
	select {
	case r := <-m.reqs:
		return r, nil
	case <-m.ctx.Done():
		return nil, m.ctx.Err()
	}
}

func (m *memStream) Send(r *discovery.DiscoveryResponse) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent[r.TypeUrl]++
	return nil
}

func (m *memStream) count(typeURL string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sent[typeURL]
}
