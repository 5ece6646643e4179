package integration

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Bad input never blocks good input: 1,000 registrations of which some are
// bad; exactly the good ones reach the xDS client, and istiod's log names
// every bad one with its reason.
func TestBadInputIsSkippedGoodInputServed(t *testing.T) {
	const n = 1000
	port, err := harness.FreePortOn("127.0.0.1")
	require.NoError(t, err)
	nodes := []string{"bad-input-a", "bad-input-b"}
	var ops api.TxnOps
	for _, node := range nodes {
		ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: node, Address: "127.3.0.1"}}})
	}
	addr := func(i int) string { return fmt.Sprintf("127.3.%d.%d", 1+i/250, 1+i%250) }
	type bad struct{ id, reason string }
	var good []string
	var bads []bad
	svc := func(node, id, name, address string, p int, tags []string, meta map[string]string) {
		ops = append(ops, &api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: node,
			Service: api.AgentService{ID: id, Service: name, Address: address, Port: p, Tags: tags, Meta: meta}}})
	}
	for i := range n {
		id, node := fmt.Sprintf("mixed-%04d", i), nodes[i%2]
		switch i % 50 {
		case 1:
			svc(node, id, "mixed", "db-"+id+".example.com", port, nil, nil)
			bads = append(bads, bad{id, "is not an IP address"})
		case 2:
			svc(node, id, "mixed", "999.1.1.1", port, nil, nil)
			bads = append(bads, bad{id, "is not an IP address"})
		case 3:
			svc(node, id, "mixed", "fe80::1%eth0", port, nil, nil)
			bads = append(bads, bad{id, "is scoped to a network interface"})
		case 4:
			svc(node, id, "mixed", addr(i), 0, nil, nil)
			bads = append(bads, bad{id, "port 0 is out of range"})
		case 5:
			svc(node, id, "mixed", addr(i), 70000, nil, nil)
			bads = append(bads, bad{id, "port 70000 is out of range"})
		default:
			var tags []string
			meta := map[string]string{"protocol": "grpc"}
			switch i {
			case 10:
				for j := range 1000 {
					tags = append(tags, fmt.Sprintf("t%d=v%d", j, j))
				}
			case 11:
				meta["huge"] = strings.Repeat("x", 512) // Consul's limit; too long for a label
			case 12:
				meta["bytes"] = "\xff\xfe\xfd"
			case 13:
				meta["protocol"] = "http" // disagrees with the others on this port
			}
			svc(node, id, "mixed", addr(i), port, tags, meta)
			good = append(good, fmt.Sprintf("%s:%d", addr(i), port))
		}
	}
	// The same service ID on two nodes: two instances, both good.
	svc(nodes[0], "dup", "mixed", "127.3.9.1", port, nil, nil)
	svc(nodes[1], "dup", "mixed", "127.3.9.2", port, nil, nil)
	good = append(good, fmt.Sprintf("127.3.9.1:%d", port), fmt.Sprintf("127.3.9.2:%d", port))
	// Services whose names are no DNS label never reach istiod.
	badNames := []string{"BadName", "bad_name", "bad.name", strings.Repeat("a", 64)}
	for _, name := range badNames {
		svc(nodes[0], "x-"+name, name, "127.3.9.9", port, nil, nil)
	}
	// A node without an address, and an instance with none of its own.
	ops = append(ops, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: "no-address"}}})
	svc("no-address", "orphan", "mixed", "", port, nil, nil)
	bads = append(bads, bad{"orphan", "neither the service nor its node has an address"})

	for len(ops) > 0 {
		k := min(len(ops), 64)
		ok, resp, _, err := mesh.Consul.Client.Txn().Txn(ops[:k], nil)
		require.NoError(t, err)
		if !ok {
			for _, e := range resp.Errors {
				t.Errorf("txn op %d: %s", e.OpIndex, e.What)
			}
			t.FailNow()
		}
		ops = ops[k:]
	}
	t.Cleanup(func() {
		for _, node := range append(nodes, "no-address") {
			_, _ = mesh.Consul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil)
		}
	})

	cluster := fmt.Sprintf("outbound|%d||mixed.service.consul", port)
	sort.Strings(good)
	var view []string
	require.Eventually(t, func() bool {
		d, err := harness.ADSDump(mesh.Istiod.XDSAddr, "default", cluster)
		if err != nil {
			return false
		}
		view = harness.EndpointAddrs(d.Endpoints[cluster])
		sort.Strings(view)
		return slices.Equal(good, view)
	}, 30*time.Second, 200*time.Millisecond, "xDS endpoints: want the %d good ones, have %d", len(good), len(view))
	t.Logf("%d registrations, %d bad skipped, %d good served over xDS", n+2, len(bads), len(good))

	log := mesh.Istiod.Log()
	for _, b := range bads {
		assert.Regexp(t, regexp.QuoteMeta(fmt.Sprintf(`consul service "mixed" instance %q on node`, b.id))+".*"+regexp.QuoteMeta(b.reason), log)
	}
	assert.Contains(t, log, `registrations declare different protocols on port`)
	for _, name := range badNames {
		assert.Contains(t, log, fmt.Sprintf(`consul service %q is not served: name is not a DNS label`, name))
		addr, err := mesh.Istiod.ServiceAddress(name + ".service.consul")
		assert.NoError(t, err)
		assert.Empty(t, addr)
	}

	// /debug/consulz says the same to an operator, per service.
	mixed := consulz(t, mesh.Istiod, "mixed").Registries[0]
	require.Len(t, mixed.Services, 1)
	reasons := map[string]string{}
	for _, s := range mixed.Services[0].Skipped {
		reasons[s.Instance] = s.Reason
	}
	for _, b := range bads {
		assert.Contains(t, reasons[b.id], b.reason, "consulz reason for %s", b.id)
	}
	for _, name := range badNames {
		v := consulz(t, mesh.Istiod, name).Registries[0]
		require.Len(t, v.NotServed, 1, name)
		assert.Contains(t, v.NotServed[0].Reason, "name is not a DNS label", name)
	}
}
