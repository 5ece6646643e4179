// Package integration runs the local mesh end to end: real Consul, real
// kube-apiserver + etcd, the patched istiod, and grpc-go xDS clients.
package integration

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// mesh is shared by every test of the package: starting istiod and the
// Kubernetes API once keeps the suite fast on a 2-core machine.
var mesh *harness.Mesh

func TestMain(m *testing.M) {
	// Re-executed inside a test host: serve as a workload, nothing else.
	if spec := os.Getenv("PILOT_CONSUL_WORKLOAD"); spec != "" {
		os.Exit(serveWorkload(spec))
	}
	env, err := harness.NewProcessEnv("pilot-consul-it")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mesh, err = harness.StartMesh(env, func(s string) { fmt.Fprintln(os.Stderr, ">>", s) })
	if err != nil {
		env.Close()
		fmt.Fprintln(os.Stderr, "local mesh failed to start:", err)
		os.Exit(1)
	}
	local = &e2e.Local{ConsulClient: mesh.Consul.Client, XDS: mesh.XDS, Kube: mesh.Kube}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "istiod log tail:\n%s\n", mesh.Istiod.Tail(40))
	}
	env.Close()
	os.Exit(code)
}

// serveWorkload runs a gRPC workload named by spec "name ip port" until killed.
func serveWorkload(spec string) int {
	var name, ip string
	var port int
	if _, err := fmt.Sscan(spec, &name, &ip, &port); err != nil {
		fmt.Fprintln(os.Stderr, "bad PILOT_CONSUL_WORKLOAD:", err)
		return 2
	}
	env, _ := harness.NewProcessEnv("workload")
	defer env.Close()
	if _, err := harness.StartWorkload(env, name, ip, port); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}
