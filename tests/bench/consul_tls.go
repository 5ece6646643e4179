package bench

// consul_tls.go sets up Route A over HTTPS (-consul-https): Consul's HTTPS
// listener, and the counting proxy in front of it speaking HTTPS too, as a
// TLS-terminating load balancer does. Over HTTPS the registry's watches
// share HTTP/2 connections, 250 to one; over plain HTTP each needs one.

import (
	"fmt"
	"net"
	"strconv"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// consulTLS is what Route A's istiod and proxy need to reach Consul over HTTPS.
type consulTLS struct {
	ca                  *harness.CA
	port                int    // Consul's HTTPS port
	proxyCert, proxyKey string // the proxy's certificate, for 127.0.0.1
}

const consulServerName = "server.dc1.consul"

// newConsulTLS issues the certificates and picks Consul's HTTPS port.
func newConsulTLS(env harness.Env) (*consulTLS, func(*harness.ConsulConfig), error) {
	ca, err := harness.NewCA(env.TempDir(), "bench")
	if err != nil {
		return nil, nil, fmt.Errorf("consul CA: %w", err)
	}
	srvCert, srvKey, err := ca.Issue("server", []string{consulServerName}, nil)
	if err != nil {
		return nil, nil, err
	}
	proxyCert, proxyKey, err := ca.Issue("proxy", nil, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		return nil, nil, err
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		return nil, nil, err
	}
	t := &consulTLS{ca: ca, port: ports[0], proxyCert: proxyCert, proxyKey: proxyKey}
	return t, func(c *harness.ConsulConfig) {
		c.TLS = &harness.ConsulTLS{Port: t.port, CAFile: ca.CertFile, CertFile: srvCert, KeyFile: srvKey}
	}, nil
}

// proxy starts the counting proxy in front of Consul's HTTPS listener.
func (t *consulTLS) proxy(env harness.Env) (*harness.FaultProxy, error) {
	return harness.StartFaultProxyTLS(env, "https://127.0.0.1:"+strconv.Itoa(t.port), harness.ProxyTLS{
		CertFile: t.proxyCert, KeyFile: t.proxyKey, CAFile: t.ca.CertFile, ServerName: consulServerName})
}

// args are the istiod flags that trust the proxy's certificate.
func (t *consulTLS) args() []string { return []string{"--consulCACert", t.ca.CertFile} }
