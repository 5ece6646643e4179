package harness

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Env is what a harness needs from its caller: *testing.T, or the demo's own.
type Env interface {
	Cleanup(func())
	Logf(format string, args ...any)
	TempDir() string
}

// Consul is a real Consul dev agent (server + agent) on loopback ports.
type Consul struct {
	HTTPAddr    string // 127.0.0.1:port
	SerfWANAddr string // for joining another datacenter
	Client      *api.Client
	proc        *Process
	dir         string
	args        []string
	bin         string
}

// StartConsulServer starts a single-node Consul server with a data directory
// (not a dev agent), so a restart keeps its catalog and Raft indexes — and
// WipeData simulates a rebuilt cluster.
func StartConsulServer(env Env, extra ...string) (*Consul, error) {
	dir := env.TempDir()
	return StartConsul(env, append([]string{"-dev=false", "-server", "-bootstrap-expect", "1",
		"-data-dir", filepath.Join(dir, "data"), "-ui=false"}, extra...)...)
}

// StartConsul starts a Consul dev agent; it is stopped at the env's cleanup.
// Extra agent arguments (e.g. "-datacenter", "dc2", or "-hcl", "acl { ... }")
// apply to every start.
func StartConsul(env Env, extra ...string) (*Consul, error) {
	bin, err := Binary("consul")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	dir := env.TempDir()
	c := &Consul{HTTPAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), dir: dir, bin: bin}
	c.args = []string{"agent", "-dev", "-node", "consul-" + strconv.Itoa(ports[0]),
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-log-level", "info",
		"-http-port", strconv.Itoa(ports[0]), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-server-port", strconv.Itoa(ports[1]), "-serf-lan-port", strconv.Itoa(ports[2]),
		"-serf-wan-port", strconv.Itoa(ports[3])}
	c.args = append(c.args, extra...)
	c.SerfWANAddr = "127.0.0.1:" + strconv.Itoa(ports[3])
	cfg := api.DefaultConfig()
	cfg.Address = c.HTTPAddr
	if c.Client, err = api.NewClient(cfg); err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	env.Cleanup(c.Stop)
	if err := c.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// URL is the agent's HTTP API URL.
func (c *Consul) URL() string { return "http://" + c.HTTPAddr }

// Start (re)starts the agent with an empty catalog and waits for a leader;
// extra agent arguments apply to this start only (e.g. -hcl service definitions).
func (c *Consul) Start(extra ...string) error {
	logged := 0
	if c.proc != nil {
		logged = len(c.proc.Log()) // a restart appends to the same log
	}
	p, err := Start(c.dir, "consul", c.bin, append(append([]string{}, c.args...), extra...), nil)
	if err != nil {
		return err
	}
	c.proc = p
	err = p.WaitReady(60*time.Second, func(ctx context.Context) error {
		// A leader is not enough: until the agent's first anti-entropy sync,
		// services registered with it stay out of the catalog (for a retry
		// interval of tens of seconds if that sync failed early).
		if out := p.Log(); len(out) < logged || !strings.Contains(out[logged:], "agent: Synced node info") {
			return fmt.Errorf("agent has not synced with the catalog yet")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL()+"/v1/status/leader", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b [64]byte
		n, _ := resp.Body.Read(b[:])
		if resp.StatusCode != http.StatusOK || n <= 2 || string(b[:n]) == `""` {
			return fmt.Errorf("no leader yet (HTTP %d)", resp.StatusCode)
		}
		return nil
	})
	if err != nil {
		p.Stop()
		return fmt.Errorf("consul: %w", err)
	}
	return nil
}

// Kill ends the agent at once, like a crash.
func (c *Consul) Kill() {
	if c.proc != nil {
		c.proc.Kill()
	}
}

// WipeData deletes a stopped server's data directory (StartConsulServer).
func (c *Consul) WipeData() error {
	for i, a := range c.args {
		if a == "-data-dir" && i+1 < len(c.args) {
			return os.RemoveAll(c.args[i+1])
		}
	}
	return fmt.Errorf("consul: not started with a data directory")
}

// Stop stops the agent.
func (c *Consul) Stop() {
	if c.proc != nil {
		c.proc.Stop()
	}
}

// Log returns the agent's log.
func (c *Consul) Log() string { return c.proc.Log() }
