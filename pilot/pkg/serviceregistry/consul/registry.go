// Package consul is a HashiCorp Consul service registry for istiod: it watches
// a Consul catalog with blocking queries and serves its services and healthy
// instances to Istio's xDS server, pushing only what changed.
package consul

// registry.go owns the registry's shape: what it is built from, what it runs
// and how it stops. The data path, in order: detectors (catalog.go,
// health.go, pinpoint.go) mark services; the consumer (service.go) reads,
// converts (convert.go), stores (store.go) and pushes.

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry"
	"istio.io/istio/pilot/pkg/serviceregistry/provider"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/config/protocol"
)

// Provider is the registry's provider ID; the patched Istio tree names the
// same value provider.Consul.
const Provider provider.ID = "Consul"

// defaultTrustDomain is Istio's, used until mesh config names one.
const defaultTrustDomain = "cluster.local"

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
	// InlineEndpoints publishes each service's healthy instances in its
	// ServiceEntry's endpoints, not as WorkloadEntries (AmbientInputs;
	// consul-mcp --inlineEndpoints).
	InlineEndpoints bool
	// vips is the VIP table the registries of one istiod share
	// (NewRegistries); nil gives the registry one of its own.
	vips *vipPool
	// shared publishes the shared hostnames' ServiceEntries for ambient
	// with --consulDatacenterFailover (NewRegistries); nil without it.
	shared *sharedFeed
}

// Controller is the Consul registry for one Consul cluster and datacenter.
type Controller struct {
	// Istio 1.29's ServiceDiscovery includes the ambient index methods
	// (1.30 dropped them); on 1.29 Consul services do not reach ambient
	// (ambient.go feeds 1.30's index), so the no-op set, as upstream's
	// ServiceEntry controller had there.
	model.NoopAmbientIndexes
	model.NetworkGatewaysHandler

	args     Args
	opts     Options
	consul   *consulClient
	conv     converter
	handlers model.ControllerHandlers

	catalog  *catalogWatch
	services *serviceWatches
	detector atomic.Int32  // detectorUndecided, detectorServices or detectorCatalog
	decided  chan struct{} // closed when the first listing chose the detector
	fellBack chan struct{} // closed when the catalog-wide detectors start
	health   *healthWatch
	pinpoint *pinpointer
	dirty    *dirtySet
	store    *store

	status  *status
	sync    *syncTracker
	metrics *registryMetrics
	ambient *ambientFeed // nil unless the ambient index asked (AmbientInputs)
}

// New builds a registry from completed Args.
func New(args Args, opts Options) (*Controller, error) {
	if opts.ClusterID == "" {
		opts.ClusterID = "consul"
	}
	metrics := newRegistryMetrics(opts.ClusterID)
	client, err := newClient(args, metrics)
	if err != nil {
		return nil, err
	}
	if opts.TrustDomain == nil {
		opts.TrustDomain = func() string { return defaultTrustDomain }
	}
	if opts.KubernetesHas == nil {
		opts.KubernetesHas = func(host.Name) bool { return false }
	}
	var remoteDC string
	if opts.RemoteDatacenter {
		remoteDC = args.Datacenter
	}
	if opts.vips == nil {
		opts.vips = newVIPPool(args.Mapping.VIPRange)
	}
	if opts.shared == nil && args.DatacenterFailover {
		opts.shared = newSharedFeed(args.Mapping.Namespace, opts.InlineEndpoints)
	}
	c := &Controller{
		args:   args,
		opts:   opts,
		consul: client,
		conv: converter{
			domain:          args.Mapping.Domain,
			entNamespace:    args.EnterpriseNamespace,
			partition:       args.Partition,
			namespace:       args.Mapping.Namespace,
			clusterID:       opts.ClusterID,
			includeWarning:  args.Mapping.IncludeWarning,
			sendUnhealthy:   args.Mapping.SendUnhealthy,
			defaultProtocol: protocol.Parse(args.Mapping.DefaultProtocol),
			defaultSA:       args.Mapping.DefaultServiceAccount,
			servicePort:     args.Mapping.DefaultServicePort,
			trustDomain:     opts.TrustDomain,
			remoteDC:        remoteDC,
			failover:        remoteDC != "" && args.DatacenterFailover,
		},
		catalog:  &catalogWatch{},
		services: newServiceWatches(),
		decided:  make(chan struct{}),
		fellBack: make(chan struct{}),
		health:   newHealthWatch(),
		pinpoint: newPinpointer(),
		dirty:    newDirtySet("consul-" + string(opts.ClusterID)),
		store:    newStore(opts.vips, opts.ClusterID, metrics),
		status:   newStatus(opts.ClusterID, args.ServerURL, metrics),
		sync:     newSyncTracker(),
		metrics:  metrics,
	}
	opts.vips.join(opts.ClusterID, func() { c.dirty.mark(0, c.store.movedVIPs()...) })
	if opts.shared != nil {
		opts.shared.join(opts.ClusterID)
	}
	return c, nil
}

// Provider implements serviceregistry.Instance.
func (c *Controller) Provider() provider.ID { return Provider }

// Cluster implements serviceregistry.Instance.
func (c *Controller) Cluster() cluster.ID { return c.opts.ClusterID }

// Run watches Consul until stop closes. Everything it starts (goroutines,
// timers, the dirty set) has ended when it returns.
func (c *Controller) Run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.sync.started = time.Now()
	c.metrics.synced.Record(0)
	c.metrics.syncSeconds.Record(0)
	log.Infof("consul registry %s: watching %s (consistency %s, %s watches, at most %d connections)",
		c.opts.ClusterID, c.args.ServerURL, c.args.Consistency, c.args.Watch, c.args.MaxConnections)

	var wg sync.WaitGroup
	for range c.args.MaxConcurrentRequests {
		wg.Go(func() { c.work(ctx) })
	}
	wg.Go(func() { c.keep(ctx, "catalog watch", func() { c.blockingWatch(ctx, "catalog", c.readCatalog) }) })
	c.services.begin(ctx, c.watchService, func(names []string) uint64 { return c.dirty.markWith(mark{fresh: true}, names...) })
	wg.Go(func() { <-ctx.Done(); c.services.end() })
	wg.Go(func() { c.runCatalogWide(ctx) })
	wg.Go(func() { c.runSentinel(ctx) })
	wg.Go(func() { c.awaitSync(ctx) })

	<-stop
	cancel()
	c.dirty.shutDown()
	wg.Wait()
	c.consul.closeIdle()
	log.Infof("consul registry %s stopped", c.opts.ClusterID)
}

// HasSynced is true once every service of the first catalog listing has been
// read and pushed to istiod, or once the first sync went SyncTimeout without
// progress (so an unreachable Consul cannot keep istiod unready forever).
func (c *Controller) HasSynced() bool { return c.sync.synced.Load() }

// awaitSync logs the end of the first sync, or gives up waiting for it
// once it has made no progress (the first listing, a service of it read)
// for SyncTimeout. A sync that makes progress, however slowly, is never
// cut short: a ready istiod with part of the catalog would drop the
// clusters of every service not yet read from proxies that connect to it.
func (c *Controller) awaitSync(ctx context.Context) {
	timer := time.NewTimer(c.args.SyncTimeout)
	defer timer.Stop()
	var expired <-chan time.Time
	if c.args.SyncTimeout > 0 {
		expired = timer.C
	} else {
		timer.Stop() // 0: readiness waits for the first sync, however long
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.sync.done:
			c.syncCompleted()
			services, endpoints, _ := c.store.counts()
			log.Infof("consul registry %s synced: %d services, %d endpoints in %v",
				c.opts.ClusterID, services, endpoints, time.Since(c.sync.started).Round(time.Millisecond))
			return
		case <-expired:
		}
		if wait := time.Until(c.sync.lastProgress().Add(c.args.SyncTimeout)); wait > 0 {
			timer.Reset(wait)
			continue
		}
		missing, ended := c.sync.timeout()
		if !ended {
			continue // synced meanwhile; logged above
		}
		c.metrics.syncTimeouts.Increment()
		log.Errorf("consul registry %s: NOT SYNCED: the first sync from Consul at %s made no progress for %v (last error: %v); "+
			"reporting ready WITHOUT %s: proxies that connect now get no cluster for them until Consul answers",
			c.opts.ClusterID, c.args.ServerURL, c.args.SyncTimeout, c.status.view().lastErr, unreadText(missing))
		select {
		case <-ctx.Done():
		case <-c.sync.complete:
			c.syncCompleted()
			log.Infof("consul registry %s: first sync complete after all, %v after start",
				c.opts.ClusterID, time.Since(c.sync.started).Round(time.Millisecond))
		}
		return
	}
}

// runCatalogWide runs the catalog-wide detectors once the listing chose
// them (servicewatch.go), until ctx ends.
func (c *Controller) runCatalogWide(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-c.fellBack:
	}
	var wg sync.WaitGroup
	for _, state := range watchedStates {
		wg.Go(func() {
			c.keep(ctx, state+" health watch", func() { c.blockingWatch(ctx, "health", c.readHealth(state)) })
		})
	}
	wg.Go(func() { c.keep(ctx, "nodes watch", func() { c.blockingWatch(ctx, "nodes", c.readNodes) }) })
	wg.Go(func() { c.keep(ctx, "pinpoint", func() { c.runPinpoint(ctx) }) })
	wg.Wait()
}

// idle says whether the registry has caught up with everything it has
// seen: the catalog is listed, and every service's watch has answered or,
// catalog-wide, the first read of every check (the pinpoint baseline) is
// done and no read of checks is requested or running, nor a pinpoint
// verdict waiting; no read of a service is queued or running. A refused
// service waiting out its own retry delay does not count.
func (c *Controller) idle() bool {
	switch c.detector.Load() {
	case detectorServices:
		return c.services.caughtUp() && !c.dirty.busy()
	case detectorCatalog:
		return c.pinpoint.lastIndex() > 0 && !c.pinpoint.busy() && !c.dirty.busy()
	}
	return false
}

// syncCompleted exports the end of the first sync.
func (c *Controller) syncCompleted() {
	c.metrics.synced.Record(1)
	c.metrics.syncSeconds.Record(time.Since(c.sync.started).Seconds())
}

func unreadText(missing int) string {
	if missing < 0 {
		return "any Consul service (the catalog was never listed)"
	}
	return fmt.Sprintf("%d unread Consul services", missing)
}

// keep runs loop until ctx ends. A panic in it is recovered (see
// recovered) and the loop started again after a pause: the watches hold
// no state a restart loses, and a restarted watch re-reads from scratch.
func (c *Controller) keep(ctx context.Context, name string, loop func()) {
	for ctx.Err() == nil {
		func() {
			defer func() {
				if v := recover(); v != nil {
					c.recovered(name, v)
				}
			}()
			loop()
		}()
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

// recovered handles a panic in the registry: logged with its stack,
// counted (pilot_consul_panics_total) and shown in /debug/consulz; the
// caller restarts what panicked. Not crashing is deliberate
// (docs/reliability.md): every replica reads the same catalog, so a panic that some
// Consul data provokes would crash all of them together, again after each
// restart, and with them every Kubernetes service the mesh holds. Recovered,
// the registry keeps its last good state and the rest of istiod serves on.
func (c *Controller) recovered(where string, v any) error {
	err := fmt.Errorf("consul registry %s: panic in %s: %v", c.opts.ClusterID, where, v)
	c.metrics.panics.Increment()
	c.status.panicked(err.Error())
	log.Errorf("%v; recovered, its last good state is kept and it is retried\n%s", err, debug.Stack())
	return err
}
