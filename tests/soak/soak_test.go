// Package soak runs the registry under sustained Consul churn: health flips,
// registrations and deregistrations at a steady rate against the real
// Consul, kube-apiserver and patched istiod, watched by raw ADS clients.
// The default is the fast variant `make test` runs; `make test-soak` sets
// the full shape (PILOT_CONSUL_SOAK_* below).
package soak

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/bench"
)

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s", name)
	return n
}

func TestChurnSoak(t *testing.T) {
	cfg := bench.SoakConfig{
		Services: envInt(t, "PILOT_CONSUL_SOAK_SERVICES", 100),
		Slots:    8, // room for changes still in flight (istiod pushes up to 10 s late under steady churn)
		Rate:     envInt(t, "PILOT_CONSUL_SOAK_RATE", 100),
		Duration: time.Duration(envInt(t, "PILOT_CONSUL_SOAK_SECONDS", 10)) * time.Second,
		Watchers: 2,
		Step:     t.Logf,
	}
	res, err := bench.Soak(t, cfg)
	require.NoError(t, err)

	mib := func(b float64) float64 { return b / (1 << 20) }
	t.Logf("%d changes (%v) at %.0f/s over %s across %d services", res.Changes, res.Kinds, res.ChangeRate, cfg.Duration, cfg.Services)
	t.Logf("change -> every watcher: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d samples, %d unseen)",
		res.Latency.P50, res.Latency.P99, res.Latency.Max, res.Latency.Count, res.Unseen)
	t.Logf("istiod: %.1f s CPU during changes (%.0f%% of one core), peak RSS %.0f MiB; %d Consul requests (%.2f per change, %.0f full re-reads)",
		res.CPU.Seconds(), 100*res.CPU.Seconds()/cfg.Duration.Seconds(), mib(float64(res.PeakRSS)),
		res.ConsulRequests, float64(res.ConsulRequests)/float64(res.Changes), res.FullRereads)
	t.Logf("istiod goroutines before/end/settled: %.0f / %.0f / %.0f; heap in use (after GC) %.0f / %.0f / %.0f MiB",
		res.Goroutines[0], res.Goroutines[1], res.Goroutines[2], mib(res.HeapBytes[0]), mib(res.HeapBytes[1]), mib(res.HeapBytes[2]))

	assert.GreaterOrEqual(t, res.ChangeRate, 0.9*float64(cfg.Rate), "the driver kept the rate")
	// A flip costs 2 requests (the health watch wakes, one service read), a
	// (de)registration 3–4 (plus the catalog watch and a pinpoint read).
	assert.LessOrEqual(t, float64(res.ConsulRequests)/float64(res.Changes), 4.0, "Consul requests per change")
	assert.Empty(t, res.Mismatches, "every watcher ends with exactly Consul's truth")
	assert.Zero(t, res.Unseen, "every change reached every watcher")
	assert.LessOrEqual(t, res.Goroutines[2], res.Goroutines[0]*1.05+10, "istiod goroutines back to baseline")
	assert.LessOrEqual(t, res.HeapBytes[2], res.HeapBytes[0]*1.25+16<<20, "istiod heap back to baseline")
	// istiod's debounce pushes at the latest PILOT_DEBOUNCE_MAX (10 s) after a
	// change, however steady the stream: anything later means it fell behind.
	assert.Less(t, res.Latency.Max, 15_000.0, "istiod keeps up")
}
