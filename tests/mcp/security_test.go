package mcp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// ADS over TLS: istiod's configSources tlsSettings (mode SIMPLE, the CA
// inline, the server name in sni) verifies the server's certificate and
// reads Consul through it.
func TestTLSToIstiod(t *testing.T) {
	ca, err := harness.NewCA(t.TempDir(), "mcp")
	require.NoError(t, err)
	cert, key, err := ca.Issue("consul-mcp", []string{"consul-mcp.istio-system.svc"}, nil)
	require.NoError(t, err)
	m, err := harness.StartMCP(t, consul.URL(), "--tlsCert="+cert, "--tlsKey="+key)
	require.NoError(t, err)
	caPEM, err := os.ReadFile(ca.CertFile)
	require.NoError(t, err)
	meshConfig := fmt.Sprintf("configSources:\n- address: xds://%s\n  tlsSettings:\n    mode: SIMPLE\n    sni: consul-mcp.istio-system.svc\n"+
		"    caCertificates: |\n%s- address: k8s://\n", m.XDSAddr, indent(string(caPEM), "      "))
	i, err := harness.StartUpstreamIstiod(t, kube, meshConfig)
	require.NoError(t, err)
	x, err := harness.NewXDSClient(i.XDSAddr, "default")
	require.NoError(t, err)
	s := e2e.NewService(t, local, "overtls", 1, e2e.GRPCMeta, nil)
	c, err := x.Dial(s.Target())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	e2e.EventuallyServedBy(t, c, s.ID(0))
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}

// With --tlsClientCA only clients holding a certificate from that CA that
// names istiod's identity get an answer; the others never see a byte of
// the catalog. Defect (issue #38): any certificate of the CA was accepted,
// so with the mesh's root every workload of the mesh could read the whole
// Consul catalog; a workload's certificate is now refused.
func TestClientCertificateRequired(t *testing.T) {
	dir := t.TempDir()
	ca, err := harness.NewCA(dir, "mcp")
	require.NoError(t, err)
	cert, key, err := ca.Issue("consul-mcp", []string{"consul-mcp"}, nil)
	require.NoError(t, err)
	cliCert, cliKey, err := ca.IssueFor("istiod", []string{"istiod"}, nil, []string{"spiffe://cluster.local/ns/istio-system/sa/istiod"})
	require.NoError(t, err)
	wlCert, wlKey, err := ca.IssueFor("web", nil, nil, []string{"spiffe://cluster.local/ns/shop/sa/web"})
	require.NoError(t, err)
	m, err := harness.StartMCP(t, consul.URL(), "--tlsCert="+cert, "--tlsKey="+key, "--tlsClientCA="+ca.CertFile)
	require.NoError(t, err)
	pem, err := os.ReadFile(ca.CertFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))

	fetch := func(certs []tls.Certificate) error {
		cc, err := grpc.NewClient(m.XDSAddr, grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: pool, ServerName: "consul-mcp", Certificates: certs, MinVersion: tls.VersionTLS12})))
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: ServiceEntryType}); err != nil {
			return err
		}
		r, err := st.Recv()
		if err != nil {
			return err
		}
		if len(r.Resources) == 0 {
			return fmt.Errorf("no ServiceEntry")
		}
		return nil
	}
	assert.Error(t, fetch(nil), "no client certificate")
	workload, err := tls.LoadX509KeyPair(wlCert, wlKey)
	require.NoError(t, err)
	assert.Error(t, fetch([]tls.Certificate{workload}), "a workload of the mesh, signed by the same CA")
	pair, err := tls.LoadX509KeyPair(cliCert, cliKey)
	require.NoError(t, err)
	assert.NoError(t, fetch([]tls.Certificate{pair}), "istiod's identity")
}

// Beyond loopback without --tlsClientCA the server refuses to start, and
// says why, before it listens anywhere: an upstream istiod cannot present
// a client certificate, so anyone who reached that port would read the
// catalog that Consul's ACLs guard.
func TestRemoteListenerNeedsClientCA(t *testing.T) {
	bin, err := harness.Binary("consul-mcp")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--consulServerURL", consul.URL(), "--grpcAddr", ":15110").CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), "--tlsClientCA is required")
}

// The ACL token comes from a file and is re-read when it rotates: a bad
// token keeps the last good state (istiod goes on serving it), the next
// good one brings what changed meanwhile. The token never appears in the
// server's log, debug pages or metrics.
func TestTokenRotation(t *testing.T) {
	const root = "7b1b0f1e-0000-4000-8000-0000000000bb"
	c, err := harness.StartConsul(t, harness.DenyByDefault(root))
	require.NoError(t, err)
	tok, err := harness.CreateReadToken(c.Client)
	require.NoError(t, err)
	wrong := "00000000-0000-4000-8000-00000000beef"
	file := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(file, []byte(tok.SecretID+"\n"), 0o600))
	m, err := harness.StartMCP(t, c.URL(), "--consulTokenFile="+file, "--consulWaitTime=2s")
	require.NoError(t, err)
	i, err := harness.StartUpstreamIstiod(t, kube, harness.MCPMeshConfig(m.XDSAddr))
	require.NoError(t, err)
	x, err := harness.NewXDSClient(i.XDSAddr, "default")
	require.NoError(t, err)
	env := &e2e.Local{ConsulClient: c.Client, XDS: x, Kube: kube}
	a := e2e.NewService(t, env, "rotate-a", 1, e2e.GRPCMeta, nil)
	ca := env.Dial(t, a.Target())
	e2e.EventuallyServedBy(t, ca, a.ID(0))

	require.NoError(t, os.WriteFile(file, []byte(wrong), 0o600))
	require.Eventually(t, func() bool {
		b, err := m.Debug("/debug/consulz")
		return err == nil && strings.Contains(string(b), "ACL not found")
	}, 20*time.Second, 100*time.Millisecond, "the bad token is reported")
	b := e2e.NewService(t, env, "rotate-b", 1, e2e.GRPCMeta, nil)
	assert.Equal(t, map[string]int{a.ID(0): 20}, e2e.Counts(ca, 20), "the last good state is served")

	require.NoError(t, os.WriteFile(file, []byte(tok.SecretID), 0o600))
	e2e.EventuallyServedBy(t, env.Dial(t, b.Target()), b.ID(0))

	out := m.Log()
	for _, path := range []string{"/debug/mcpz?names=1", "/debug/consulz"} {
		body, err := m.Debug(path)
		require.NoError(t, err)
		out += string(body)
	}
	metrics, err := m.Metrics()
	require.NoError(t, err)
	out += string(metrics)
	for _, secret := range []string{tok.SecretID, wrong, root} {
		assert.NotContains(t, out, secret, "a token leaked")
	}
	assertNoRejections(t, m, i)
}
