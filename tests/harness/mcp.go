package harness

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"
)

// MCP is consul-mcp from `make build`: the Consul registry served over
// MCP-over-xDS to istiods that were not patched.
type MCP struct {
	XDSAddr   string // ADS, what istiod's configSources names (xds://...)
	HTTPAddr  string // /ready, /metrics
	DebugAddr string // /debug/mcpz, /debug/consulz
	Args      []string
	Env       []string // extra environment, e.g. CONSUL_HTTP_TOKEN_FILE=...
	proc      *Process
	dir, bin  string
}

// StartMCP starts consul-mcp against a Consul and waits for /ready (its
// first full read); extra flags are appended (later flags win).
func StartMCP(env Env, consulURL string, extra ...string) (*MCP, error) {
	m, err := NewMCP(env, consulURL, extra...)
	if err != nil {
		return nil, err
	}
	return m, m.Start()
}

// NewMCP prepares consul-mcp without starting it; it is stopped at the
// env's cleanup.
func NewMCP(env Env, consulURL string, extra ...string) (*MCP, error) {
	bin, err := Binary("consul-mcp")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	m := &MCP{XDSAddr: addr(0), HTTPAddr: addr(1), DebugAddr: addr(2), dir: env.TempDir(), bin: bin}
	m.Args = append([]string{"--consulServerURL", consulURL, "--grpcAddr", m.XDSAddr, "--httpAddr", m.HTTPAddr,
		"--debugAddr", m.DebugAddr, "--log_output_level", "default:info,consul:info,mcp:info"}, extra...)
	env.Cleanup(m.Stop)
	return m, nil
}

// Start (re)starts consul-mcp on the same ports and waits for /ready.
func (m *MCP) Start() error {
	if err := m.Launch(); err != nil {
		return err
	}
	if err := m.proc.WaitReady(60*time.Second, httpOK("http://"+m.HTTPAddr+"/ready", nil)); err != nil {
		m.proc.Stop()
		return fmt.Errorf("consul-mcp: %w", err)
	}
	return nil
}

// Launch starts consul-mcp and waits only until its ADS port listens,
// not for its first read: a benchmark times that read as part of the
// route's sync.
func (m *MCP) Launch() error {
	p, err := Start(m.dir, "consul-mcp", m.bin, m.Args, m.Env)
	if err != nil {
		return err
	}
	m.proc = p
	if err := p.WaitReady(60*time.Second, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", m.XDSAddr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		p.Stop()
		return fmt.Errorf("consul-mcp: %w", err)
	}
	return nil
}

// PID of the running consul-mcp.
func (m *MCP) PID() int { return m.proc.PID() }

// Stop stops consul-mcp.
func (m *MCP) Stop() {
	if m.proc != nil {
		m.proc.Stop()
	}
}

// Log is consul-mcp's output so far.
func (m *MCP) Log() string { return m.proc.Log() }

// Tail is the last n lines of consul-mcp's output.
func (m *MCP) Tail(n int) string { return m.proc.Tail(n) }

// Debug GETs a debug path, e.g. /debug/mcpz.
func (m *MCP) Debug(path string) ([]byte, error) {
	return get("http://"+m.DebugAddr+path, 10*time.Second)
}

// Metrics returns consul-mcp's Prometheus metrics text.
func (m *MCP) Metrics() ([]byte, error) { return get("http://"+m.HTTPAddr+"/metrics", 10*time.Second) }

// MCPMeshConfig is the mesh config of an istiod that reads Consul from
// consul-mcp servers and Istio's own config from Kubernetes.
func MCPMeshConfig(xdsAddrs ...string) string {
	s := "configSources:\n"
	for _, a := range xdsAddrs {
		s += "- address: xds://" + a + "\n"
	}
	return s + "- address: k8s://\n"
}
