package e2e

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"
)

// GRPCMeta marks a Consul instance as gRPC (HTTP/2) for the mesh.
var GRPCMeta = map[string]string{"protocol": "grpc"}

// Service is a Consul service whose instances are real gRPC servers of env.
type Service struct {
	t    *testing.T
	env  Env
	Name string
	Port int
	addr map[int]string
}

// NewService starts n instances of name with passing TTL checks; tags (may
// be nil) gives instance i's tags.
func NewService(t *testing.T, env Env, name string, n int, meta map[string]string, tags func(i int) []string) *Service {
	t.Helper()
	s := &Service{t: t, env: env, Name: name, addr: map[int]string{}}
	for i := range n {
		var tg []string
		if tags != nil {
			tg = tags(i)
		}
		s.Add(i, meta, tg)
	}
	return s
}

// ID is instance i's id: its Consul service ID and the name its server answers with.
func (s *Service) ID(i int) string { return InstanceID(s.Name, i) }

// Target is the service's mesh name with its port.
func (s *Service) Target() string { return fmt.Sprintf("%s.service.consul:%d", s.Name, s.Port) }

// Add starts instance i's server and registers it; deregistered at cleanup.
func (s *Service) Add(i int, meta map[string]string, tags []string) {
	s.t.Helper()
	addr, port := s.env.StartServer(s.t, s.Name, i)
	if s.Port != 0 && port != s.Port {
		s.t.Fatalf("instance %d of %s listens on port %d, the others on %d", i, s.Name, port, s.Port)
	}
	s.Port, s.addr[i] = port, addr
	s.Register(i, meta, tags)
	s.t.Cleanup(func() { _ = s.env.Consul().Agent().ServiceDeregister(s.ID(i)) })
}

// Register (re-)registers instance i with a passing TTL check; its server keeps running.
func (s *Service) Register(i int, meta map[string]string, tags []string) {
	s.t.Helper()
	require.NoError(s.t, s.env.Consul().Agent().ServiceRegister(s.Registration(i, meta, tags)))
}

// Registration is what Register sends Consul for instance i (for callers
// outside the test's goroutine, which cannot use Register).
func (s *Service) Registration(i int, meta map[string]string, tags []string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{
		ID: s.ID(i), Name: s.Name, Address: s.addr[i], Port: s.Port, Meta: meta, Tags: tags,
		Check: &api.AgentServiceCheck{CheckID: "ttl-" + s.ID(i), TTL: "1h", Status: api.HealthPassing},
	}
}

// Deregister removes instance i from Consul; its server keeps running.
func (s *Service) Deregister(i int) {
	s.t.Helper()
	require.NoError(s.t, s.env.Consul().Agent().ServiceDeregister(s.ID(i)))
}

// SetHealth sets instance i's TTL check (api.HealthPassing, HealthWarning, HealthCritical).
func (s *Service) SetHealth(i int, status string) {
	s.t.Helper()
	require.NoError(s.t, s.env.Consul().Agent().UpdateTTL("ttl-"+s.ID(i), "", status))
}
