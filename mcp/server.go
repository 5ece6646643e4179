package mcp

// server.go owns the ADS service: one stream per istiod, each with its own
// versions and nonces per type, all brought to the newest snapshot. The
// snapshot is rebuilt at most once per debounce window however fast Consul
// changes, and a client still sending its ACK when two snapshots pass gets
// only the newest: state of the world resends whole collections, so
// coalescing is what bounds the cost.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	networkingclient "istio.io/client-go/pkg/apis/networking/v1"

	"istio.io/istio/pkg/kube/krt"
)

// Debounce bounds how often the server rebuilds and pushes: it waits for
// Quiet without a change, but never longer than Max after the first.
type Debounce struct{ Quiet, Max time.Duration }

// Server is the MCP-over-xDS server.
type Server struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer

	debounce Debounce
	limits   Limits
	ready    func() bool
	changed  chan struct{}

	mu      sync.Mutex
	builder *builder
	current atomic.Pointer[snapshot]
	clients map[uint64]*client
	nextID  atomic.Uint64
	nacks   []nackView // most recent last, bounded
}

// NewServer serves the collections given to Add once ready reports true
// (every registry synced: before that a response would delete, in istiod,
// whatever has not been read yet).
func NewServer(ready func() bool, debounce Debounce, limits Limits) *Server {
	return &Server{
		debounce: debounce,
		limits:   limits,
		ready:    ready,
		changed:  make(chan struct{}, 1),
		builder:  newBuilder(),
		clients:  map[uint64]*client{},
	}
}

// Add subscribes the server to one registry's objects; call before Run.
func (s *Server) Add(services krt.Collection[*networkingclient.ServiceEntry], workloads krt.Collection[*networkingclient.WorkloadEntry]) {
	s.builder.services = append(s.builder.services, services)
	s.builder.workloads = append(s.builder.workloads, workloads)
	services.RegisterBatch(func([]krt.Event[*networkingclient.ServiceEntry]) { s.markChanged() }, false)
	workloads.RegisterBatch(func([]krt.Event[*networkingclient.WorkloadEntry]) { s.markChanged() }, false)
}

func (s *Server) markChanged() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Run builds snapshots until ctx ends: the first once ready, then after
// each debounced burst of changes.
func (s *Server) Run(ctx context.Context) {
	poll := time.NewTicker(100 * time.Millisecond)
	for !s.ready() {
		select {
		case <-ctx.Done():
			poll.Stop()
			return
		case <-poll.C:
		}
	}
	poll.Stop()
	s.publish()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.changed:
		}
		first := time.Now()
		quiet := time.NewTimer(s.debounce.Quiet)
	burst:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				return
			case <-s.changed:
				wait := min(s.debounce.Quiet, s.debounce.Max-time.Since(first))
				if wait <= 0 {
					break burst
				}
				quiet.Reset(wait)
			case <-quiet.C:
				break burst
			}
		}
		quiet.Stop()
		s.publish()
	}
}

func (s *Server) publish() {
	start := time.Now()
	snap := s.builder.build()
	prev := s.current.Swap(snap)
	for name, why := range snap.skipped {
		if prev == nil || prev.skipped[name] != why {
			log.Warnf("mcp: not serving %s: %s", name, why)
		}
	}
	for typeURL, c := range snap.types {
		resourcesGauge.With(typeLabel.Value(typeURL)).Record(float64(len(c.resources)))
	}
	skippedGauge.Record(float64(len(snap.skipped)))
	snapshotSeconds.Record(time.Since(start).Seconds())
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.clients {
		c.wake()
	}
}

// Ready reports whether the first snapshot, from every registry's first
// full read, is built.
func (s *Server) Ready() bool { return s.current.Load() != nil }

// StreamAggregatedResources serves one istiod.
func (s *Server) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	c := &client{id: s.nextID.Add(1), wakeup: make(chan struct{}, 1), types: map[string]*typeState{}, connected: time.Now()}
	if p, ok := peer.FromContext(stream.Context()); ok {
		c.peer, c.host = p.Addr.String(), peerHost(p.Addr.String())
	}
	s.mu.Lock()
	if open := s.streamsFrom(c.host); open >= s.limits.StreamsPerPeer {
		s.mu.Unlock()
		refusedTotal.With(reasonLabel.Value("streams_per_peer")).Increment()
		return status.Errorf(codes.ResourceExhausted, "%d streams from %s are open already, the most one peer may hold (--maxStreamsPerPeer)",
			open, c.host)
	}
	s.clients[c.id] = c
	clientsGauge.Record(float64(len(s.clients)))
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, c.id)
		clientsGauge.Record(float64(len(s.clients)))
		s.mu.Unlock()
	}()

	reqs := make(chan *discovery.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- r:
			case <-stream.Context().Done():
				return
			}
		}
	}()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case r := <-reqs:
			if err := s.handle(stream, c, r); err != nil {
				return err
			}
		case <-c.wakeup:
			if err := s.pushChanged(stream, c); err != nil {
				return err
			}
		}
	}
}

// streamsFrom counts the streams open from host; s.mu is held.
func (s *Server) streamsFrom(host string) int {
	n := 0
	for _, c := range s.clients {
		if c.host == host {
			n++
		}
	}
	return n
}

// handle applies one request: a subscription, an ACK or a NACK
// of the last response of its type, or a stale one (ignored).
func (s *Server) handle(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, c *client, r *discovery.DiscoveryRequest) error {
	c.mu.Lock()
	if c.node == "" && r.GetNode().GetId() != "" {
		c.node = r.GetNode().GetId()
	}
	st := c.types[r.TypeUrl]
	c.mu.Unlock()
	if st == nil && !isPilotType(r.TypeUrl) {
		// Never answered, and not kept: a client naming types by the
		// thousand must not grow the stream's state.
		log.Debugf("mcp: %s asked for %s, a type this server does not serve", c.describe(), r.TypeUrl)
		return nil
	}
	switch {
	// A request for a type not yet answered on this stream subscribes to
	// it, whatever its nonce: istiod's client (adsc) puts the time in the
	// nonce of its first requests.
	case r.ResponseNonce == "" || st == nil || st.nonce == "":
		c.mu.Lock()
		if st == nil {
			st = &typeState{}
			c.types[r.TypeUrl] = st
		}
		resubscribed := st.nonce != ""
		// A new request for a type asks for its state again (istiod
		// reconnecting on the same stream never happens; a re-subscription
		// after a NACK might).
		st.subscribed, st.sentVersion = true, ""
		we := c.types[WorkloadEntryType]
		c.mu.Unlock()
		if resubscribed {
			return s.resend(stream, c, r.TypeUrl, st)
		}
		if r.TypeUrl == ServiceEntryType && (we == nil || we.sentVersion == "") {
			// WorkloadEntries go first (see pushChanged); istiod asks for
			// them right after, so wait for that request, a moment at most.
			time.AfterFunc(entriesFirstWait, c.wake)
			return nil
		}
		if r.TypeUrl == WorkloadEntryType {
			defer c.wake() // the ServiceEntries that waited for these
		}
		return s.send(stream, c, r.TypeUrl, st)
	case r.ResponseNonce != st.nonce:
		return nil // answers a response that a newer one replaced
	case r.ErrorDetail != nil:
		nacksTotal.With(typeLabel.Value(r.TypeUrl)).Increment()
		n := nackView{At: time.Now().UTC(), Client: c.describe(), Type: r.TypeUrl, Version: st.sentVersion,
			Nonce: truncate(r.ResponseNonce, 64), Message: truncate(r.ErrorDetail.GetMessage(), maxNackMessage)}
		log.Warnf("mcp: %s rejected %s version %s: %s", n.Client, r.TypeUrl, st.sentVersion, n.Message)
		c.mu.Lock()
		st.nacked, st.lastNack = st.nacked+1, n.Message
		c.mu.Unlock()
		s.mu.Lock()
		s.nacks = append(s.nacks, n)
		if len(s.nacks) > maxNacksKept {
			s.nacks = s.nacks[len(s.nacks)-maxNacksKept:]
		}
		s.mu.Unlock()
	default:
		c.mu.Lock()
		st.ackedVersion = r.VersionInfo
		c.mu.Unlock()
	}
	return nil
}

const maxNacksKept = 20

// resend answers a re-subscription: at once if the stream's last resend of
// the type is ResendEvery old, else once that time has passed (a change
// published meanwhile brings it sooner). However many re-subscriptions
// come, a type is resent at most once per ResendEvery.
func (s *Server) resend(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, c *client, typeURL string, st *typeState) error {
	c.mu.Lock()
	wait := s.limits.ResendEvery - time.Since(st.resentAt)
	if wait > 0 {
		pending := st.resendPending
		st.resendPending = true
		c.mu.Unlock()
		resendsDeferred.With(typeLabel.Value(typeURL)).Increment()
		if !pending {
			time.AfterFunc(wait, c.wake)
		}
		return nil
	}
	st.resentAt, st.resendPending = time.Now(), false
	c.mu.Unlock()
	return s.send(stream, c, typeURL, st)
}

// pushChanged sends every subscribed type whose version moved,
// WorkloadEntries before ServiceEntries. Upstream istiod recomputes every
// ServiceEntry of a namespace whose selector might match a WorkloadEntry
// that arrives, scanning the namespace's WorkloadEntries each time: with
// the ServiceEntries first, 10,000 WorkloadEntries arriving after 1,000
// ServiceEntries kept istiod busy for 134 s before its clients had
// everything; arriving first, they cost nothing until each ServiceEntry
// selects its own once.
func (s *Server) pushChanged(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, c *client) error {
	c.mu.Lock()
	types := make([]string, 0, len(c.types))
	for t, st := range c.types {
		if st.subscribed {
			types = append(types, t)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(types, func(a, b string) int {
		return cmp.Or(cmp.Compare(sendOrder(a), sendOrder(b)), strings.Compare(a, b))
	})
	for _, t := range types {
		c.mu.Lock()
		st := c.types[t]
		c.mu.Unlock()
		if err := s.send(stream, c, t, st); err != nil {
			return err
		}
	}
	return nil
}

func sendOrder(typeURL string) int {
	switch typeURL {
	case WorkloadEntryType:
		return 0
	case ServiceEntryType:
		return 1
	}
	return 2
}

// entriesFirstWait bounds how long a ServiceEntry subscription waits for
// the WorkloadEntry one, so a client that never asks for WorkloadEntries
// still gets its ServiceEntries.
const entriesFirstWait = 500 * time.Millisecond

// send brings the client's view of one type to the current snapshot, if it
// is not there yet. Before the first snapshot nothing is sent: istiod waits
// (and keeps what it holds) rather than receive a partial catalog.
func (s *Server) send(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, c *client, typeURL string, st *typeState) error {
	snap := s.current.Load()
	if snap == nil {
		return nil
	}
	coll := snap.get(typeURL)
	if coll == nil || coll.version == st.sentVersion {
		return nil
	}
	c.mu.Lock()
	c.nonce++
	nonce := fmt.Sprintf("%d", c.nonce)
	c.mu.Unlock()
	if err := stream.Send(&discovery.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: coll.version, Nonce: nonce, Resources: coll.resources}); err != nil {
		return fmt.Errorf("send %s to %s: %w", typeURL, c.describe(), err)
	}
	c.mu.Lock()
	st.sentVersion, st.nonce, st.sent = coll.version, nonce, st.sent+1
	if st.resendPending {
		st.resentAt, st.resendPending = time.Now(), false
	}
	c.mu.Unlock()
	pushesTotal.With(typeLabel.Value(typeURL)).Increment()
	pushBytesTotal.With(typeLabel.Value(typeURL)).RecordInt(int64(coll.bytes))
	return nil
}

// client is one istiod's stream.
type client struct {
	id        uint64
	peer      string
	host      string // peer's, as streams are counted
	connected time.Time
	wakeup    chan struct{}

	mu    sync.Mutex
	node  string
	nonce uint64
	types map[string]*typeState
}

type typeState struct {
	subscribed                       bool
	sentVersion, nonce, ackedVersion string
	sent, nacked                     int
	lastNack                         string
	resentAt                         time.Time // last resend a re-subscription asked for
	resendPending                    bool      // one is waiting for ResendEvery to pass
}

func (c *client) wake() {
	select {
	case c.wakeup <- struct{}{}:
	default:
	}
}

func (c *client) describe() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.node != "" {
		return c.node + " (" + c.peer + ")"
	}
	return c.peer
}
