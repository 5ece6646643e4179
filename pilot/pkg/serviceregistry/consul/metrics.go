package consul

// metrics.go owns the registry's log scope and metrics (README, Architecture).

import (
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/monitoring"
)

var log = istiolog.RegisterScope("consul", "Consul service registry")

var (
	watchLabel = monitoring.CreateLabel("watch")

	consulServices = monitoring.NewGauge("pilot_consul_services",
		"Consul services served to istiod.")
	consulEndpoints = monitoring.NewGauge("pilot_consul_endpoints",
		"Consul endpoints (routable instance ports) served to istiod.")
	consulWatchErrors = monitoring.NewSum("pilot_consul_watch_errors_total",
		"Failed Consul reads, by reader (catalog, health, nodes, checks, service).")
	consulRequests = monitoring.NewSum("pilot_consul_requests_total",
		"HTTP requests sent to Consul.")
	consulLastSync = monitoring.NewGauge("pilot_consul_last_sync_timestamp_seconds",
		"Unix time of the last successful read from Consul.")
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
	consulPushLatency = monitoring.NewDistribution("pilot_consul_change_to_push_seconds",
		"Time from a Consul change being observed to its push to istiod.",
		[]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10})
)
