package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The ACL token never appears in istiod's output (the FLAG: dump included),
// in any /debug endpoint, or in error messages — here while istiod logs real
// ACL errors from a default-deny Consul.
func TestTokenNeverLeaks(t *testing.T) {
	const root = "7b1b0f1e-0000-4000-8000-0000000000aa"
	flagToken := "f1a9f1a9-1111-4111-8111-111111111111"
	fileToken := "f11ef11e-2222-4222-8222-222222222222"
	c, err := harness.StartConsul(t, harness.DenyByDefault(root))
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(file, []byte(fileToken), 0o600))
	istiod, err := harness.StartIstiod(t, mesh.Kube, c.URL(), "--consulToken="+flagToken,
		"--consulTokenFile="+file, "--consulSyncTimeout=2s", "--log_output_level=default:info,consul:debug")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(istiod.Log(), "ACL not found") }, 20*time.Second, 100*time.Millisecond,
		"istiod should be logging the ACL error")

	out := istiod.Log()
	assert.Contains(t, out, `FLAG: --consulToken="<redacted>"`)
	b, err := istiod.Debug("/debug/list")
	require.NoError(t, err)
	var paths []string
	require.NoError(t, json.Unmarshal(b, &paths))
	require.Greater(t, len(paths), 10)
	require.Contains(t, paths, "consulz", "/debug/consulz is listed, and searched below")
	served := 0
	for _, p := range paths {
		// Some need a proxy ID and answer 400; their bodies are searched too.
		body, err := istiod.Debug("/debug/" + p)
		if err == nil {
			served++
		}
		out += "\n" + p + ":\n" + string(body)
	}
	m, err := istiod.Metrics()
	require.NoError(t, err)
	out += string(m)
	for _, secret := range []string{flagToken, fileToken} {
		if i := strings.Index(out, secret); i >= 0 {
			t.Errorf("token leaked: ...%s...", out[max(0, i-300):min(len(out), i+100)])
		}
	}
	assert.Greater(t, served, 15, "most debug endpoints answer")
	t.Logf("searched istiod's log, /metrics and %d debug endpoints (%d answered 200)", len(paths), served)
}

// An instance's service account (meta service-account) becomes its SPIFFE
// identity and meta tls-mode=istio turns on auto-mTLS for it: the client
// cluster verifies that SAN and the endpoint is marked tlsMode=istio (so the
// istio TLS transport socket is used). Without them: no SAN, and the endpoint
// is tlsMode=disabled (plaintext).
func TestWorkloadIdentity(t *testing.T) {
	secure := e2e.NewService(t, local, "secure", 1, map[string]string{"service-account": "payments", "tls-mode": "istio"}, nil)
	plain := e2e.NewService(t, local, "plain", 1, nil, nil)
	san := "spiffe://cluster.local/ns/consul/sa/payments"
	secureCluster := fmt.Sprintf("outbound|%d||secure.service.consul", secure.Port)
	plainCluster := fmt.Sprintf("outbound|%d||plain.service.consul", plain.Port)
	require.Eventually(t, func() bool {
		d, err := harness.ADSDump(mesh.Istiod.XDSAddr, "default", secureCluster, plainCluster)
		if err != nil || d.Clusters[secureCluster] == nil || d.Clusters[plainCluster] == nil {
			return false
		}
		sb, _ := proto.Marshal(d.Clusters[secureCluster])
		pb, _ := proto.Marshal(d.Clusters[plainCluster])
		secureMode, plainMode := tlsModes(d.Endpoints[secureCluster]), tlsModes(d.Endpoints[plainCluster])
		t.Logf("secure: SAN %v, endpoint tlsMode %v; plain: SAN-free %v, endpoint tlsMode %v",
			strings.Contains(string(sb), san), secureMode, !strings.Contains(string(pb), "spiffe://"), plainMode)
		return strings.Contains(string(sb), san) && fmt.Sprint(secureMode) == "[istio]" &&
			!strings.Contains(string(pb), "spiffe://") && fmt.Sprint(plainMode) == "[disabled]"
	}, 30*time.Second, 250*time.Millisecond)
}

// Defect (issue #37): every endpoint's workload was its Consul service ID,
// which Istio's telemetry metadata carries to every sidecar
// (destination_workload, and destination_canonical_service without an app
// label): each instance, and under churn each new ID (a Nomad allocation),
// was a metric series of its own. The workload is now the service's name,
// or meta workload where an instance names its job: what a client receives
// in the endpoints' istio metadata is one workload per service.
func TestWorkloadNamesAreNotPerInstance(t *testing.T) {
	web := e2e.NewService(t, local, "jobs", 3, nil, nil)
	named := e2e.NewService(t, local, "named", 2, map[string]string{"workload": "payments-job"}, nil)
	clusters := []string{fmt.Sprintf("outbound|%d||jobs.service.consul", web.Port), fmt.Sprintf("outbound|%d||named.service.consul", named.Port)}
	want := map[string][]string{ // istiod's format: workload;namespace;canonical service;revision;cluster
		clusters[0]: {"jobs;consul;jobs;;consul", "jobs;consul;jobs;;consul", "jobs;consul;jobs;;consul"},
		clusters[1]: {"payments-job;consul;payments-job;;consul", "payments-job;consul;payments-job;;consul"},
	}
	var got map[string][]string
	require.Eventually(t, func() bool {
		d, err := harness.ADSDump(mesh.Istiod.XDSAddr, "default", clusters...)
		if err != nil {
			return false
		}
		got = map[string][]string{}
		for _, c := range clusters {
			got[c] = workloadsOf(d.Endpoints[c])
		}
		return assert.ObjectsAreEqual(want, got)
	}, 30*time.Second, 250*time.Millisecond, "endpoint workload metadata: want %v, got %v", want, got)
}

// workloadsOf lists each endpoint's telemetry workload from its EDS metadata.
func workloadsOf(cla *endpoint.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			out = append(out, e.GetMetadata().GetFilterMetadata()["istio"].GetFields()["workload"].GetStringValue())
		}
	}
	return out
}

// tlsModes lists each endpoint's auto-mTLS mode from its EDS metadata.
func tlsModes(cla *endpoint.ClusterLoadAssignment) []string {
	var out []string
	if cla == nil {
		return out
	}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			mode := "disabled"
			if md := e.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"]; md != nil {
				if v := md.GetFields()["tlsMode"].GetStringValue(); v != "" {
					mode = v
				}
			}
			out = append(out, mode)
		}
	}
	return out
}
