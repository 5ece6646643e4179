// Package kind runs the end-to-end cases on a kind cluster: our istiod
// image installed by istioctl with the install overlay, Consul (ACLs on) in
// the cluster, servers in pods outside the mesh, and clients in proxyless
// gRPC pods injected by istiod's webhook (template grpc-agent: our proxyv2
// image runs pilot-agent without Envoy). build/e2e-kind.sh (make test-kind)
// builds every image offline and runs it.
package kind

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Config is the suite's settings, from the environment (see FromEnv).
type Config struct {
	Cluster      string // kind cluster name
	NodeImage    string // kind node image
	OwnNodeImage bool   // NodeImage is ours (build/kind-node.sh): no default CNI, CoreDNS forwards nothing
	PilotImage   string // our istiod image (make docker)
	ProxyHub     string // hub and tag of the proxyv2 image injected into pods (ours: pilot-agent)
	ProxyTag     string
	EchoImage    string // the e2e-echo workload image
	ConsulImage  string // Consul server image
	MCPImage     string // consul-mcp (make docker)
	// UpstreamPilotImage is the release's istiod as shipped (build/docker.sh
	// upstream), which the MCP case installs.
	UpstreamPilotImage string
	// PreviousRelease is the previous minor (VERSION's ISTIO_PREVIOUS), and
	// our istiod and proxy images of it (hub ProxyHub): the upgrade case's N-1.
	PreviousRelease    string
	PreviousPilotImage string
	PreviousProxyTag   string
	Keep               bool // leave the cluster up after the run
}

// FromEnv reads the E2E_* variables build/e2e-kind.sh sets.
func FromEnv() (Config, error) {
	c := Config{
		Cluster:      env("E2E_KIND_CLUSTER", "pilot-consul-e2e"),
		NodeImage:    os.Getenv("E2E_NODE_IMAGE"),
		OwnNodeImage: os.Getenv("E2E_OWN_NODE_IMAGE") != "",
		PilotImage:   os.Getenv("E2E_PILOT_IMAGE"),
		ProxyHub:     os.Getenv("E2E_PROXY_HUB"),
		ProxyTag:     os.Getenv("E2E_PROXY_TAG"),
		EchoImage:    os.Getenv("E2E_ECHO_IMAGE"),
		ConsulImage:  os.Getenv("E2E_CONSUL_IMAGE"),
		MCPImage:     os.Getenv("E2E_MCP_IMAGE"),

		UpstreamPilotImage: os.Getenv("E2E_UPSTREAM_PILOT_IMAGE"),
		PreviousRelease:    os.Getenv("E2E_PREVIOUS_RELEASE"),
		PreviousPilotImage: os.Getenv("E2E_PREVIOUS_PILOT_IMAGE"),
		PreviousProxyTag:   os.Getenv("E2E_PREVIOUS_PROXY_TAG"),
		Keep:               os.Getenv("KEEP") != "",
	}
	var missing []string
	for _, v := range [][2]string{{"E2E_NODE_IMAGE", c.NodeImage}, {"E2E_PILOT_IMAGE", c.PilotImage},
		{"E2E_PROXY_HUB", c.ProxyHub}, {"E2E_PROXY_TAG", c.ProxyTag},
		{"E2E_ECHO_IMAGE", c.EchoImage}, {"E2E_CONSUL_IMAGE", c.ConsulImage},
		{"E2E_MCP_IMAGE", c.MCPImage}, {"E2E_UPSTREAM_PILOT_IMAGE", c.UpstreamPilotImage},
		{"E2E_PREVIOUS_RELEASE", c.PreviousRelease}, {"E2E_PREVIOUS_PILOT_IMAGE", c.PreviousPilotImage},
		{"E2E_PREVIOUS_PROXY_TAG", c.PreviousProxyTag}} {
		if v[1] == "" {
			missing = append(missing, v[0])
		}
	}
	if len(missing) > 0 {
		return c, fmt.Errorf("%s not set: run the kind suite with 'make test-kind' (build/e2e-kind.sh)", strings.Join(missing, ", "))
	}
	return c, nil
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// ErrNoDocker: the suite cannot run on this machine.
var ErrNoDocker = errors.New("the kind suite needs a Docker daemon")

// Preflight fails fast, with the reason, where kind cannot run: no docker
// client, or no daemon answering it. It takes at most a few seconds.
func Preflight() error {
	if _, err := exec.LookPath("docker"); err != nil {
		return fmt.Errorf("%w: no docker client on PATH", ErrNoDocker)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return fmt.Errorf("%w ('docker info' failed: %s). Run the suite with 'make test-kind', which "+
			"starts a Docker daemon where none answers", ErrNoDocker, firstLine(out, err))
	}
	return nil
}

func firstLine(out []byte, err error) string {
	s := strings.TrimSpace(string(out))
	if s == "" && err != nil {
		s = err.Error()
	}
	s, _, _ = strings.Cut(s, "\n")
	return s
}
