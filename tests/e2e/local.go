package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Local is the mesh on this machine: servers are processes on loopback
// addresses, clients are proxyless gRPC channels to the patched istiod, and
// Istio config goes to the local kube-apiserver.
type Local struct {
	ConsulClient *api.Client
	XDS          *harness.XDSClient
	Kube         *harness.Kube

	mu    sync.Mutex
	ports map[string]int // per test and service: its instances share one port
}

var _ Env = (*Local)(nil)

// Consul implements Env.
func (l *Local) Consul() *api.Client { return l.ConsulClient }

// localInstances bounds the instances per test (distinct loopback addresses).
const localInstances = 16

// IP is instance i's loopback address in test t: distinct per test (by name)
// and instance, so tests never collide on an address.
func IP(t *testing.T, i int) string {
	sum := 0
	for _, c := range t.Name() {
		sum = (sum*31 + int(c)) % 200
	}
	return fmt.Sprintf("127.0.%d.%d", 10+sum, 10+i)
}

// StartServer implements Env: a gRPC server on IP(t, i) and the service's port.
func (l *Local) StartServer(t *testing.T, service string, i int) (string, int) {
	t.Helper()
	require.Less(t, i, localInstances, "instance index")
	w, err := harness.StartWorkload(t, InstanceID(service, i), IP(t, i), l.port(t, service))
	require.NoError(t, err)
	return w.IP, w.Port
}

// port is a service's port in test t: one free on all of the test's addresses.
func (l *Local) port(t *testing.T, service string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := t.Name() + "|" + service
	if p, ok := l.ports[key]; ok {
		return p
	}
	ips := make([]string, localInstances)
	for i := range ips {
		ips[i] = IP(t, i)
	}
	p, err := harness.FreePortOn(ips...)
	require.NoError(t, err)
	if l.ports == nil {
		l.ports = map[string]int{}
	}
	l.ports[key] = p
	return p
}

// Dial implements Env: a proxyless gRPC channel (grpc-go's xDS resolver).
func (l *Local) Dial(t *testing.T, target string) Caller {
	t.Helper()
	c, err := l.XDS.Dial(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Apply implements Env.
func (l *Local) Apply(t *testing.T, yaml string) {
	t.Helper()
	require.NoError(t, l.Kube.Apply(context.Background(), []byte(yaml)))
	t.Cleanup(func() { _ = l.Kube.Delete(context.Background(), []byte(yaml)) })
}

// ClientNamespace implements Env: the xDS client's node is in "default"
// (harness.NewMesh).
func (l *Local) ClientNamespace() string { return "default" }
