package consul

// metrics.go owns the registry's log scope and metrics (docs/architecture.md,
// docs/observability.md). Every series carries the registry's cluster ID:
// one istiod runs a registry per Consul cluster and datacenter, and without
// the label their gauges would overwrite each other.

import (
	"istio.io/istio/pkg/cluster"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/monitoring"
)

var log = istiolog.RegisterScope("consul", "Consul service registry")

var (
	clusterLabel = monitoring.CreateLabel("cluster")
	watchLabel   = monitoring.CreateLabel("watch")
	reasonLabel  = monitoring.CreateLabel("reason")

	consulServices = monitoring.NewGauge("pilot_consul_services",
		"Consul services served to istiod.")
	consulEndpoints = monitoring.NewGauge("pilot_consul_endpoints",
		"Consul endpoints (routable instance ports) served to istiod.")
	consulSkipped = monitoring.NewGauge("pilot_consul_skipped_instances",
		"Consul registrations left out of the services read, by reason (hostname_address, scoped_address, no_address, port_out_of_range, bad_service_port, not_a_workload, no_data); /debug/consulz names each one.")
	consulVIPs = monitoring.NewGauge("pilot_consul_vips",
		"Service VIPs allocated from --consulVIPRange.")
	consulVIPCapacity = monitoring.NewGauge("pilot_consul_vip_capacity",
		"Addresses --consulVIPRange holds.")
	consulWatchErrors = monitoring.NewSum("pilot_consul_watch_errors_total",
		"Failed Consul reads, by reader (catalog, health, nodes, checks, service).")
	consulRequests = monitoring.NewSum("pilot_consul_requests_total",
		"HTTP requests sent to Consul.")
	consulLastSync = monitoring.NewGauge("pilot_consul_last_sync_timestamp_seconds",
		"Unix time of the last successful read from Consul.")
	consulLastError = monitoring.NewGauge("pilot_consul_last_error_timestamp_seconds",
		"Unix time of the last failed read from Consul (0: none since start).")
	consulSynced = monitoring.NewGauge("pilot_consul_synced",
		"1 once every service of Consul's first listing has been read and pushed to istiod, else 0.")
	consulSyncSeconds = monitoring.NewGauge("pilot_consul_sync_seconds",
		"How long the first sync took (0 until it completes).")
	consulFullReads = monitoring.NewSum("pilot_consul_full_rereads_total",
		"Times every service was re-read because a catalog change could not be placed (an instance without checks).")
	consulReachable = monitoring.NewGauge("pilot_consul_reachable",
		"1 while the last Consul read succeeded, 0 while Consul is unreachable (last good state is kept).")
	consulLaggingAnswers = monitoring.NewSum("pilot_consul_lagging_answers_total",
		"Service reads answered by a server behind the change that asked for them, and so re-read from the leader.")
	consulSyncTimeouts = monitoring.NewSum("pilot_consul_sync_timeouts_total",
		"First syncs given up after --consulSyncTimeout without a successful Consul read (istiod went ready without the catalog).")
	consulPanics = monitoring.NewSum("pilot_consul_panics_total",
		"Panics the registry recovered from (logged with their stack); the loop or service that panicked is retried.")
	consulFallback = monitoring.NewGauge("pilot_consul_catalog_fallback",
		"1 while the catalog-wide watches run because a watch per service would not fit --consulMaxConnections (registrations then take seconds at scale; docs/production-consul.md), else 0.")
	consulServiceWatches = monitoring.NewGauge("pilot_consul_service_watches",
		"Per-service blocking queries held open.")
	consulPushLatency = monitoring.NewDistribution("pilot_consul_change_to_push_seconds",
		"Time from a Consul change being observed to its push to istiod.",
		[]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10})
)

// registryMetrics are one registry's series.
type registryMetrics struct {
	services, endpoints, vips, vipCapacity, lastSync, lastError, synced, syncSeconds, reachable monitoring.Metric
	fallback, serviceWatches                                                                    monitoring.Metric
	requests, fullReads, lagging, syncTimeouts, panics                                          monitoring.Metric
	pushLatency                                                                                 monitoring.Metric
	cluster                                                                                     monitoring.LabelValue
}

// Readers (the watch label) and kinds of skip reason (the reason label).
var (
	readers     = []string{"catalog", "health", "nodes", "checks", "service"}
	skipReasons = []string{"no_data", "not_a_workload", "no_address", "hostname_address", "scoped_address", "port_out_of_range", "bad_service_port"}
)

// newRegistryMetrics binds the metrics to registry id and exports every
// series at zero, so that a dashboard or an alert sees a counter before
// its first event (rate() needs two samples) rather than no data.
func newRegistryMetrics(id cluster.ID) *registryMetrics {
	l := clusterLabel.Value(string(id))
	m := &registryMetrics{
		services: consulServices.With(l), endpoints: consulEndpoints.With(l),
		vips: consulVIPs.With(l), vipCapacity: consulVIPCapacity.With(l),
		lastSync: consulLastSync.With(l), lastError: consulLastError.With(l),
		synced: consulSynced.With(l), syncSeconds: consulSyncSeconds.With(l), reachable: consulReachable.With(l),
		requests: consulRequests.With(l), fullReads: consulFullReads.With(l), lagging: consulLaggingAnswers.With(l),
		syncTimeouts: consulSyncTimeouts.With(l), panics: consulPanics.With(l),
		pushLatency: consulPushLatency.With(l),
		fallback:    consulFallback.With(l), serviceWatches: consulServiceWatches.With(l),
		cluster: l,
	}
	m.fallback.Record(0)
	m.serviceWatches.Record(0)
	for _, c := range []monitoring.Metric{m.requests, m.fullReads, m.lagging, m.syncTimeouts, m.panics} {
		c.Record(0) // adds nothing to a sum
	}
	for _, w := range readers {
		consulWatchErrors.With(l, watchLabel.Value(w)).Record(0)
	}
	for _, r := range skipReasons {
		m.skipped(r, 0)
	}
	return m
}

// watchError counts a failed read by reader what.
func (m *registryMetrics) watchError(what string) {
	consulWatchErrors.With(m.cluster, watchLabel.Value(what)).Increment()
}

// skipped records how many registrations are left out for reason.
func (m *registryMetrics) skipped(reason string, n int) {
	consulSkipped.With(m.cluster, reasonLabel.Value(reason)).Record(float64(n))
}
