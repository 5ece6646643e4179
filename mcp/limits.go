package mcp

// limits.go owns what bounds a client's cost to the server: streams per
// peer, request size, and how often a stream can ask for a collection it
// already has. State of the world makes each resend the whole type (tens
// of MB at 10,000 services × 10), so a client that re-subscribes in a
// loop, or opens streams in a loop, would otherwise have the server build
// and send without end.

import (
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound what one client costs the server.
type Limits struct {
	// StreamsPerPeer bounds the streams open from one address. An istiod
	// holds one; a reconnect briefly holds two.
	StreamsPerPeer int
	// ResendEvery spaces the resends a re-subscription asks for (a request
	// without a nonce for a type already answered on the stream). Later
	// ones within it are served together at its end, or by the next change.
	ResendEvery time.Duration
}

// DefaultLimits are the server's unless flags say otherwise.
var DefaultLimits = Limits{StreamsPerPeer: 4, ResendEvery: 5 * time.Second}

// maxRequestBytes bounds one DiscoveryRequest. istiod's carry its node
// metadata, a few KB; gRPC's default (4 MiB) would let every stream hold
// that much per request.
const maxRequestBytes = 256 << 10

// maxNackMessage bounds a NACK's message as kept for /debug/mcpz.
const maxNackMessage = 1024

// GRPCOptions are the gRPC server options the ADS service needs.
func GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRequestBytes),
		// istiod's MCP client pings every 30 s (its keepalive defaults);
		// gRPC's default policy would answer that with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	}
}

// peerHost is the address a stream is counted under: its host, since a
// client that reconnects comes from a new port.
func peerHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// truncate keeps the first n bytes of s, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…(truncated)"
}
