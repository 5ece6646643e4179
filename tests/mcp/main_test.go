// Package mcp runs the MCP-over-xDS route end to end on this machine: a
// real Consul, the real kube-apiserver + etcd, consul-mcp, and the
// release's istiod as shipped (no patches) reading it through
// meshConfig.configSources, with grpc-go xDS clients calling Consul
// services through it.
package mcp

import (
	"fmt"
	"os"
	"testing"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The mesh every test shares: starting istiod and the Kubernetes API once
// keeps the suite fast on a 2-core machine.
var (
	consul *harness.Consul
	kube   *harness.Kube
	server *harness.MCP
	istiod *harness.Istiod
	local  *e2e.Local
)

func TestMain(m *testing.M) {
	env, err := harness.NewProcessEnv("pilot-consul-mcp")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := start(env); err != nil {
		env.Close()
		fmt.Fprintln(os.Stderr, "MCP mesh failed to start:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "istiod log tail:\n%s\nconsul-mcp log tail:\n%s\n", istiod.Tail(40), server.Tail(40))
	}
	env.Close()
	os.Exit(code)
}

func start(env *harness.ProcessEnv) error {
	var err error
	if consul, err = harness.StartConsul(env); err != nil {
		return err
	}
	if kube, err = harness.StartKube(env); err != nil {
		return err
	}
	if server, err = harness.StartMCP(env, consul.URL()); err != nil {
		return err
	}
	if istiod, err = harness.StartUpstreamIstiod(env, kube, harness.MCPMeshConfig(server.XDSAddr)); err != nil {
		return err
	}
	x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
	if err != nil {
		return fmt.Errorf("xds client: %w", err)
	}
	local = &e2e.Local{ConsulClient: consul.Client, XDS: x, Kube: kube}
	return nil
}
