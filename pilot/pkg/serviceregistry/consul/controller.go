package consul

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"k8s.io/client-go/util/workqueue"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry"
	"istio.io/istio/pilot/pkg/serviceregistry/provider"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/config/protocol"
)

// Provider is the registry's provider ID; the patched Istio tree names the
// same value provider.Consul.
const Provider provider.ID = "Consul"

var _ serviceregistry.Instance = &Controller{}

// Options are what istiod hands the registry besides Args.
type Options struct {
	// ClusterID is this registry's cluster ID, and so its endpoint shard.
	ClusterID cluster.ID
	// XDSUpdater receives the registry's pushes.
	XDSUpdater model.XDSUpdater
	// TrustDomain returns the mesh's trust domain, for SPIFFE identities.
	TrustDomain func() string
	// KubernetesHas reports whether a Kubernetes registry serves a hostname;
	// such a hostname is never served from Consul (Kubernetes wins).
	KubernetesHas func(host.Name) bool
	// RemoteDatacenter puts Args.Datacenter into hostnames (a non-local DC).
	RemoteDatacenter bool
}

// Controller is the Consul registry: it watches the catalog and the
// non-passing health checks with two blocking queries and reads only the
// services that changed.
type Controller struct {
	// Istio 1.29's ServiceDiscovery includes the ambient index methods
	// (1.30 dropped them); Consul services have no ambient data yet, so
	// the no-op set, as upstream's ServiceEntry controller had there.
	model.NoopAmbientIndexes

	args      Args
	opts      Options
	client    *api.Client
	transport *transport
	conv      converter
	handlers  model.ControllerHandlers
	model.NetworkGatewaysHandler

	// queue holds names of services to (re)read; it de-duplicates, never
	// reads one service twice at once, and backs off per service on errors.
	queue workqueue.TypedRateLimitingInterface[string]

	mu            sync.RWMutex
	catalog       map[string][]string      // last catalog listing: name -> tags
	catalogIndex  uint64                   // Consul index of that listing
	services      map[string]*serviceState // by Consul name; only valid services
	endpointCount int                      // endpoints of all services (gauge)
	byHost        map[host.Name]*serviceState
	byIP          map[string][]*serviceState
	fetched       map[string]uint64              // per-service index of the last read
	nodes         map[string]map[string]struct{} // node -> services with instances there
	checks        map[checkKey]string            // every check at the last pinpoint read -> service ("" for node checks)
	checksIndex   uint64                         // Consul index of the last pinpoint read
	known         map[checkKey]knownCheck        // non-passing checks as service reads saw them
	knownBySvc    map[string][]checkKey          // service -> its own checks in known
	pinpointCh    chan struct{}                  // asks for a pinpoint read (bumps.go)
	readSlots     chan struct{}                  // MaxConcurrentRequests: service and pinpoint reads share them
	dirtyAt       map[string]time.Time           // when a change to a service was first seen
	vips          *vipAllocator
	bumps         bumpTracker

	initial   map[string]struct{} // services still to read for the first sync
	synced    atomic.Bool
	started   time.Time
	reachable atomic.Bool
	lastErr   atomic.Pointer[error]
	lastWarn  atomic.Value // time.Time of the last outage warning
}

type checkKey struct{ node, id string }

// serviceState is what the registry serves for one Consul service.
type serviceState struct {
	name        string
	service     *model.Service
	endpoints   []*model.IstioEndpoint
	instances   []*instance
	fingerprint string
	epKey       string
	nodes       []string
}

// New builds a registry from completed Args.
func New(args Args, opts Options) (*Controller, error) {
	client, t, err := newClient(args)
	if err != nil {
		return nil, err
	}
	if opts.TrustDomain == nil {
		opts.TrustDomain = func() string { return "cluster.local" }
	}
	if opts.KubernetesHas == nil {
		opts.KubernetesHas = func(host.Name) bool { return false }
	}
	if opts.ClusterID == "" {
		opts.ClusterID = "consul"
	}
	var remoteDC string
	if opts.RemoteDatacenter {
		remoteDC = args.Datacenter
	}
	c := &Controller{
		args:      args,
		opts:      opts,
		client:    client,
		transport: t,
		conv: converter{
			domain:          args.Domain,
			entNamespace:    args.EnterpriseNamespace,
			partition:       args.Partition,
			namespace:       args.Namespace,
			clusterID:       opts.ClusterID,
			includeWarning:  args.IncludeWarning,
			sendUnhealthy:   args.SendUnhealthy,
			defaultProtocol: protocol.Parse(args.DefaultProtocol),
			defaultSA:       args.DefaultServiceAccount,
			trustDomain:     opts.TrustDomain,
			remoteDC:        remoteDC,
		},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](backoffMin, backoffMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "consul-" + string(opts.ClusterID)}),
		catalog:    map[string][]string{},
		services:   map[string]*serviceState{},
		byHost:     map[host.Name]*serviceState{},
		byIP:       map[string][]*serviceState{},
		fetched:    map[string]uint64{},
		nodes:      map[string]map[string]struct{}{},
		known:      map[checkKey]knownCheck{},
		knownBySvc: map[string][]checkKey{},
		pinpointCh: make(chan struct{}, 1),
		readSlots:  make(chan struct{}, args.MaxConcurrentRequests),
		dirtyAt:    map[string]time.Time{},
		vips:       newVIPAllocator(args.VIPRange),
	}
	c.lastWarn.Store(time.Time{})
	return c, nil
}

// Provider implements serviceregistry.Instance.
func (c *Controller) Provider() provider.ID { return Provider }

// Cluster implements serviceregistry.Instance.
func (c *Controller) Cluster() cluster.ID { return c.opts.ClusterID }

// Run watches Consul until stop closes.
func (c *Controller) Run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.started = time.Now()
	log.Infof("consul registry %s: watching %s (consistency %s, at most %d connections)",
		c.opts.ClusterID, c.args.ServerURL, c.args.Consistency, c.args.MaxConcurrentRequests+2)

	var wg sync.WaitGroup
	for range c.args.MaxConcurrentRequests {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	wg.Go(func() { c.blockingWatch(ctx, "catalog", c.readCatalog) })
	wg.Go(func() { c.blockingWatch(ctx, "health", c.readHealth) })
	wg.Go(func() { c.pinpointLoop(ctx) })
	wg.Go(func() { c.syncTimeout(ctx) })

	<-stop
	cancel()
	c.queue.ShutDown()
	wg.Wait()
	// Idle keep-alive connections hold goroutines; a stopped registry leaves none.
	c.transport.base.(*http.Transport).CloseIdleConnections()
	log.Infof("consul registry %s stopped", c.opts.ClusterID)
}

// warnEvery is how often an ongoing Consul outage is logged at warn level.
const warnEvery = 30 * time.Second

// HasSynced is true once every service of the first catalog listing has been
// read, or once SyncTimeout has passed (so an unreachable Consul cannot keep
// istiod unready forever).
func (c *Controller) HasSynced() bool { return c.synced.Load() }

func (c *Controller) syncTimeout(ctx context.Context) {
	if !sleep(ctx, c.args.SyncTimeout) || c.synced.Load() {
		return
	}
	c.mu.RLock()
	missing := len(c.initial)
	c.mu.RUnlock()
	log.Errorf("consul registry %s: NOT SYNCED after %v (Consul at %s unreachable or slow; %d services unread); "+
		"reporting ready anyway, serving what was read so far", c.opts.ClusterID, c.args.SyncTimeout, c.args.ServerURL, missing)
	c.synced.Store(true)
}

// LastError is the error of the latest failed Consul read, nil after a
// successful one. Messages never contain the ACL token.
func (c *Controller) LastError() error {
	if e := c.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// readFailed records a failed read. first says it is the first failure of
// this reader's streak: that one is always a warning, later ones are warnings
// at most every warnEvery (debug otherwise), so an outage is loud but not spam.
func (c *Controller) readFailed(what string, err error, retry time.Duration, first bool) {
	err = fmt.Errorf("consul %s read from %s: %w", what, c.args.ServerURL, err)
	c.lastErr.Store(&err)
	consulWatchErrors.With(watchLabel.Value(what)).Increment()
	if c.reachable.Swap(false) || !c.synced.Load() {
		consulReachable.Record(0)
	}
	if now := time.Now(); first || now.Sub(c.lastWarn.Load().(time.Time)) >= warnEvery {
		c.lastWarn.Store(now)
		log.Warnf("%v; keeping the last good state, will retry in %v", err, retry.Round(time.Millisecond))
	} else {
		log.Debugf("%v; will retry in %v", err, retry.Round(time.Millisecond))
	}
}

func (c *Controller) readSucceeded() {
	if c.lastErr.Swap(nil) != nil {
		log.Infof("consul registry %s: reads from %s succeed again", c.opts.ClusterID, c.args.ServerURL)
	}
	consulLastSync.Record(float64(time.Now().Unix()))
	if !c.reachable.Swap(true) {
		consulReachable.Record(1)
	}
}

// Services implements model.ServiceDiscovery.
func (c *Controller) Services() []*model.Service {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*model.Service, 0, len(c.services))
	for _, s := range c.services {
		if !c.opts.KubernetesHas(s.service.Hostname) {
			out = append(out, s.service)
		}
	}
	return out
}

// GetService implements model.ServiceDiscovery.
func (c *Controller) GetService(h host.Name) *model.Service {
	c.mu.RLock()
	s := c.byHost[h]
	c.mu.RUnlock()
	if s == nil || c.opts.KubernetesHas(h) {
		return nil
	}
	return s.service
}

// GetProxyServiceTargets answers for sidecars running beside a Consul
// instance (e.g. on a VM), so they get inbound configuration.
func (c *Controller) GetProxyServiceTargets(p *model.Proxy) []model.ServiceTarget {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []model.ServiceTarget
	for _, ip := range p.IPAddresses {
		for _, s := range c.byIP[ip] {
			for _, inst := range s.instances {
				if inst.address != ip {
					continue
				}
				for _, port := range s.service.Ports {
					if port.Port == inst.port {
						out = append(out, model.ServiceTarget{
							Service: s.service,
							Port:    model.ServiceInstancePort{ServicePort: port, TargetPort: uint32(inst.port)},
						})
					}
				}
			}
		}
	}
	return out
}

// GetProxyWorkloadLabels returns the labels of the Consul instance at the proxy's IP.
func (c *Controller) GetProxyWorkloadLabels(p *model.Proxy) labels.Instance {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, ip := range p.IPAddresses {
		for _, s := range c.byIP[ip] {
			for _, inst := range s.instances {
				if inst.address == ip {
					return inst.labels
				}
			}
		}
	}
	return nil
}

// MCSServices implements model.ServiceDiscovery; Consul has no MCS.
func (c *Controller) MCSServices() []model.MCSServiceInfo { return nil }

// AppendServiceHandler implements model.Controller.
func (c *Controller) AppendServiceHandler(f model.ServiceHandler) { c.handlers.AppendServiceHandler(f) }

// AppendWorkloadHandler implements model.Controller; Consul workloads are not
// WorkloadEntries, so nothing selects them.
func (c *Controller) AppendWorkloadHandler(func(*model.WorkloadInstance, model.Event)) {}

// NetworkGateways implements model.NetworkGatewaysWatcher; Consul services
// carry no cross-network gateways.
func (c *Controller) NetworkGateways() []model.NetworkGateway { return nil }
