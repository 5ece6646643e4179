package consul

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"k8s.io/apimachinery/pkg/util/validation"
)

// FuzzConvert feeds arbitrary registrations to the conversion and checks the
// invariants istiod relies on: no panic, and everything pushed is valid (an
// invalid endpoint would poison every push; see higress#1599).
// Run: make fuzz FUZZTIME=60s
func FuzzConvert(f *testing.F) {
	f.Add("web", "10.0.0.1", "", 8080, "version=v1,track|canary", "protocol", "http", "passing", "")
	f.Add("grpc-pay", "", "10.0.0.2", 0, "", "zone", "z1", "warning", "")
	f.Add("Bad_Name", "db.example.com", "", 70000, "a=b=c,|,=", "protocol", "GRPC", "critical", "")
	f.Add("x", "::ffff:10.0.0.3", "", 1, strings.Repeat("t=v,", 50), "k", "\xff\xfe", "passing", "connect-proxy")
	f.Add("y", "0.0.0.0", "fe80::1%eth0", 65535, "", "service-account", "spiffe://td/ns/a/sa/b", "maintenance", "")
	f.Fuzz(func(t *testing.T, name, addr, nodeAddr string, port int, tags, metaK, metaV, status, kind string) {
		c := testConverter()
		c.sendUnhealthy = len(name)%2 == 0
		e := &api.ServiceEntry{
			Node: &api.Node{Node: "n", Address: nodeAddr, Datacenter: "dc1"},
			Service: &api.AgentService{ID: "i", Service: name, Kind: api.ServiceKind(kind), Address: addr, Port: port,
				Tags: strings.Split(tags, ","), Meta: map[string]string{metaK: metaV}, Weights: api.AgentWeights{Passing: 1}},
			Checks: api.HealthChecks{{CheckID: "c", Status: status}},
		}
		out := c.convert(name, []*api.ServiceEntry{e, e})
		if out.service == nil {
			if len(out.endpoints) > 0 {
				t.Fatalf("endpoints without a service")
			}
			return
		}
		ports := map[string]bool{}
		for _, p := range out.service.Ports {
			if p.Port < 1 || p.Port > 65535 {
				t.Fatalf("port %d out of range", p.Port)
			}
			ports[p.Name] = true
		}
		for _, ep := range out.endpoints {
			if _, err := netip.ParseAddr(ep.Addresses[0]); err != nil {
				t.Fatalf("endpoint address %q is not an IP", ep.Addresses[0])
			}
			if !ports[ep.ServicePortName] {
				t.Fatalf("endpoint port %q not a service port", ep.ServicePortName)
			}
			for k, v := range ep.Labels {
				if len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
					t.Fatalf("invalid label %q=%q", k, v)
				}
			}
		}
	})
}
