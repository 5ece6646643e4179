package consul

import (
	"testing"

	"istio.io/istio/pkg/config/host"
	"istio.io/istio/pkg/monitoring/monitortest"
)

// The skipped-registration gauges follow the reads: each read replaces its
// service's skips, a removed service takes its skips along, and every
// reason is exported from the start (zero), per registry.
func TestSkippedAndVIPGaugesFollowTheReads(t *testing.T) {
	mt := monitortest.New(t)
	s := newStore(newVIPPool("240.241.0.0/24"), "gauges", newRegistryMetrics("gauges"))
	gauge := func(name, reason string, want float64) {
		t.Helper()
		tags := map[string]string{"cluster": "gauges"}
		if reason != "" {
			tags["reason"] = reason
		}
		mt.Assert(name, tags, monitortest.Exactly(want))
	}
	skip := func(kind string) skipped { return skipped{Instance: kind, kind: kind} }
	gauge("pilot_consul_skipped_instances", "scoped_address", 0)
	gauge("pilot_consul_vip_capacity", "", 254)

	web := []skipped{skip("hostname_address"), skip("hostname_address"), skip("port_out_of_range")}
	s.update("web", conversion{skipped: web}, readRecord{skipped: web})
	gauge("pilot_consul_skipped_instances", "hostname_address", 2)
	gauge("pilot_consul_skipped_instances", "port_out_of_range", 1)

	web = []skipped{skip("hostname_address")}
	s.update("web", conversion{skipped: web}, readRecord{skipped: web})
	db := []skipped{skip("no_address")}
	s.update("db", conversion{skipped: db}, readRecord{skipped: db})
	gauge("pilot_consul_skipped_instances", "hostname_address", 1)
	gauge("pilot_consul_skipped_instances", "port_out_of_range", 0)
	gauge("pilot_consul_skipped_instances", "no_address", 1)

	s.remove("web")
	gauge("pilot_consul_skipped_instances", "hostname_address", 0)
	gauge("pilot_consul_skipped_instances", "no_address", 1)

	s.assignVIPs([]host.Name{"a.service.consul", "b.service.consul", "c.service.consul"})
	gauge("pilot_consul_vips", "", 3)
}
