// Package e2e holds the end-to-end cases that run in every environment: the
// local mesh (tests/integration: processes, proxyless gRPC clients talking to
// istiod) and a kind cluster (tests/e2e/kind: pods, proxyless gRPC through
// pilot-agent). A case sees only Env, so both tiers run the same code
// against the same claims.
package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Env is one place the mesh runs: a Consul the patched istiod watches, gRPC
// servers that Consul instances can point at, and clients inside the mesh.
type Env interface {
	// Consul is a client for the Consul agent istiod watches; instances are
	// registered through its agent API.
	Consul() *api.Client
	// StartServer starts a gRPC server for instance i of service in test t
	// that answers every call with InstanceID(service, i), and stops it at
	// t's cleanup. All instances of a service listen on the same port. It
	// returns the address and port to register in Consul.
	StartServer(t *testing.T, service string, i int) (addr string, port int)
	// Dial returns a client inside the mesh calling host:port (a Consul
	// service's mesh name), closed at t's cleanup.
	Dial(t *testing.T, target string) Caller
	// Apply creates Istio config (YAML) in the cluster istiod watches, and
	// deletes it at t's cleanup.
	Apply(t *testing.T, yaml string)
	// ClientNamespace is the namespace of the clients Dial returns: config
	// there (a DestinationRule, say) applies to their calls.
	ClientNamespace() string
}

// Caller makes one gRPC call and returns the id of the server that answered.
type Caller interface {
	Call(timeout time.Duration) (string, error)
}

// InstanceID is instance i's Consul service ID and the name its server answers with.
func InstanceID(service string, i int) string { return fmt.Sprintf("%s-%d", service, i) }
