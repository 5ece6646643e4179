package mcp

// metrics.go owns the server's log scope and metrics (docs/mcp.md). The
// registries it runs export their own pilot_consul_* series.

import (
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/monitoring"
)

var log = istiolog.RegisterScope("mcp", "MCP-over-xDS server")

var (
	typeLabel   = monitoring.CreateLabel("type")
	reasonLabel = monitoring.CreateLabel("reason")

	clientsGauge = monitoring.NewGauge("consul_mcp_clients",
		"istiod streams connected.")
	resourcesGauge = monitoring.NewGauge("consul_mcp_resources",
		"Resources in the current snapshot, by type URL.")
	skippedGauge = monitoring.NewGauge("consul_mcp_skipped_resources",
		"Objects left out of the snapshot because istiod's validation would refuse them; /debug/mcpz names each one.")
	pushesTotal = monitoring.NewSum("consul_mcp_pushes_total",
		"Responses sent, by type URL (each one the type's whole state).")
	pushBytesTotal = monitoring.NewSum("consul_mcp_push_bytes_total",
		"Resource bytes sent, by type URL.")
	nacksTotal = monitoring.NewSum("consul_mcp_nacks_total",
		"Responses an istiod rejected, by type URL; /debug/mcpz shows the last ones.")
	refusedTotal = monitoring.NewSum("consul_mcp_refused_streams_total",
		"Streams refused, by reason (streams_per_peer: --maxStreamsPerPeer were open from that address).")
	resendsDeferred = monitoring.NewSum("consul_mcp_deferred_resends_total",
		"Re-subscriptions answered later, by type URL: a stream asked for a type again within the resend spacing.")
	snapshotSeconds = monitoring.NewGauge("consul_mcp_snapshot_build_seconds",
		"How long the last snapshot took to build.")
)
