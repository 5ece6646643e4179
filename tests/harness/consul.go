package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// Env is what a harness needs from its caller: *testing.T, or the demo's own.
type Env interface {
	Cleanup(func())
	Logf(format string, args ...any)
	TempDir() string
}

// ConsulConfig is the agent configuration a test asks for. StartConsul
// writes it as a Consul JSON config file.
type ConsulConfig struct {
	// Datacenter names the agent's datacenter (default dc1).
	Datacenter string
	// ManagementToken turns ACLs on with default_policy=deny; it is the
	// management and the agent token, and Consul.Client uses it.
	ManagementToken string
	// TLS serves HTTPS on its own port beside HTTP.
	TLS *ConsulTLS
	// Server runs a single-node server with a data directory instead of a
	// dev agent: a restart keeps the catalog and Raft indexes, and WipeData
	// simulates a rebuilt cluster.
	Server bool
	// Cluster makes the agent a member of a cluster (ConsulCluster): a
	// server expecting that many servers, or a client agent (Client), with
	// its own data directory, joining the members' Serf LAN addresses.
	Cluster *ClusterMember
	// Services are defined in the agent's configuration (as a rebuilt
	// Consul with its agents' own service files would have them).
	Services []ConsulService
	// EnableDebug serves /debug/pprof (a -dev agent always does).
	EnableDebug bool
	// MaxConnsPerClient replaces Consul's limit of HTTP connections per
	// client address (200) when set: for clients that hold one blocking
	// query per service.
	MaxConnsPerClient int
}

// ClusterMember is an agent's place in a cluster.
type ClusterMember struct {
	// Servers is the number of servers (bootstrap-expect); 0 for a client agent.
	Servers int
	// Join are the Serf LAN addresses to (retry-)join.
	Join []string
}

// ConsulTLS is the agent's HTTPS listener.
type ConsulTLS struct {
	Port                      int
	CAFile, CertFile, KeyFile string
	// VerifyIncoming requires clients to present a certificate.
	VerifyIncoming bool
}

// ConsulService is a service definition with a TTL check in Status.
type ConsulService struct {
	ID, Name, Address string
	Port              int
	Status            string
}

// DenyByDefault turns ACLs on with default_policy=deny and token as the
// management token, as operators run Consul.
func DenyByDefault(token string) func(*ConsulConfig) {
	return func(c *ConsulConfig) { c.ManagementToken = token }
}

// IstiodReadRules is the ACL policy istiod's token needs (docs/production-consul.md).
const IstiodReadRules = `service_prefix "" { policy = "read" } node_prefix "" { policy = "read" }`

// CreateReadToken creates the "istiod-read" policy (once) and a token
// holding it, with a client that has management rights.
func CreateReadToken(c *api.Client) (*api.ACLToken, error) {
	if _, _, err := c.ACL().PolicyCreate(&api.ACLPolicy{Name: "istiod-read", Rules: IstiodReadRules}, nil); err != nil {
		if p, _, rerr := c.ACL().PolicyReadByName("istiod-read", nil); rerr != nil || p == nil {
			return nil, fmt.Errorf("create ACL policy istiod-read: %w", err)
		}
	}
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{Description: "istiod",
		Policies: []*api.ACLTokenPolicyLink{{Name: "istiod-read"}}}, nil)
	if err != nil {
		return nil, fmt.Errorf("create ACL token: %w", err)
	}
	return tok, nil
}

// Consul is a real Consul agent (server + agent) on loopback ports.
type Consul struct {
	HTTPAddr    string // 127.0.0.1:port
	SerfWANAddr string // for joining another datacenter
	SerfLANAddr string // for joining this datacenter
	ServerAddr  string // the Raft address, as /v1/status/leader names it
	// Client talks to the agent, with the management token if ACLs are on.
	Client *api.Client
	node   string
	proc   *Process
	dir    string
	args   []string
	bin    string
	config ConsulConfig
}

// StartDatacenters starts two Consul servers, dc1 and dc2, and joins them
// over the WAN, as two datacenters of one Consul.
func StartDatacenters(env Env) (dc1, dc2 *Consul, err error) {
	if dc1, err = StartConsul(env); err != nil {
		return nil, nil, err
	}
	if dc2, err = StartConsul(env, func(c *ConsulConfig) { c.Datacenter = "dc2" }); err != nil {
		return nil, nil, err
	}
	if err := dc1.Client.Agent().Join(dc2.SerfWANAddr, true); err != nil {
		return nil, nil, fmt.Errorf("WAN join: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		dcs, err := dc1.Client.Catalog().Datacenters()
		if err == nil && len(dcs) == 2 {
			return dc1, dc2, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("WAN join: dc1 lists datacenters %v after 30s (last error: %v)", dcs, err)
		}
	}
}

// StartConsul starts a Consul agent configured by configure; it is stopped
// at the env's cleanup.
func StartConsul(env Env, configure ...func(*ConsulConfig)) (*Consul, error) {
	c, err := NewConsul(env, configure...)
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// NewConsul prepares an agent (ports, command line, client) without
// starting it; it is stopped at the env's cleanup once started.
func NewConsul(env Env, configure ...func(*ConsulConfig)) (*Consul, error) {
	bin, err := Binary("consul")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	dir := env.TempDir()
	c := &Consul{HTTPAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), dir: dir, bin: bin, node: "consul-" + strconv.Itoa(ports[0])}
	for _, f := range configure {
		f(&c.config)
	}
	mode := []string{"-dev"}
	switch m := c.config.Cluster; {
	case m != nil && m.Servers > 0:
		mode = []string{"-server", "-bootstrap-expect", strconv.Itoa(m.Servers), "-data-dir", filepath.Join(dir, "data"), "-ui=false"}
	case m != nil:
		mode = []string{"-data-dir", filepath.Join(dir, "data")}
	case c.config.Server:
		mode = []string{"-server", "-bootstrap-expect", "1", "-data-dir", filepath.Join(dir, "data"), "-ui=false"}
	}
	if m := c.config.Cluster; m != nil {
		for _, j := range m.Join {
			mode = append(mode, "-retry-join", j)
		}
	}
	c.args = append(append([]string{"agent"}, mode...), "-node", c.node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-log-level", "info",
		"-http-port", strconv.Itoa(ports[0]), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-server-port", strconv.Itoa(ports[1]), "-serf-lan-port", strconv.Itoa(ports[2]),
		"-serf-wan-port", strconv.Itoa(ports[3]))
	c.SerfWANAddr = "127.0.0.1:" + strconv.Itoa(ports[3])
	c.SerfLANAddr = "127.0.0.1:" + strconv.Itoa(ports[2])
	c.ServerAddr = "127.0.0.1:" + strconv.Itoa(ports[1])
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = c.HTTPAddr, c.config.ManagementToken
	if c.Client, err = api.NewClient(cfg); err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	env.Cleanup(c.Stop)
	return c, nil
}

// URL is the agent's HTTP API URL.
func (c *Consul) URL() string { return "http://" + c.HTTPAddr }

// Start (re)starts the agent and waits until it is ready; configure applies
// to this start only (e.g. services its configuration defines).
func (c *Consul) Start(configure ...func(*ConsulConfig)) error {
	if err := c.Launch(configure...); err != nil {
		return err
	}
	return c.WaitReady()
}

// WaitReady waits until the agent is ready (a leader elected, its node in
// the catalog); a failure stops it.
func (c *Consul) WaitReady() error {
	if err := c.proc.WaitReady(60*time.Second, c.ready); err != nil {
		c.proc.Stop()
		return fmt.Errorf("consul: %w", err)
	}
	return nil
}

// Launch (re)starts the agent without waiting: the servers of a cluster
// are ready only once enough of them run.
func (c *Consul) Launch(configure ...func(*ConsulConfig)) error {
	cfg := c.config
	for _, f := range configure {
		f(&cfg)
	}
	file := filepath.Join(c.dir, "agent.json")
	data, err := json.MarshalIndent(agentConfig(cfg), "", "  ")
	if err != nil {
		return fmt.Errorf("consul config: %w", err)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return fmt.Errorf("consul config: %w", err)
	}
	p, err := Start(c.dir, "consul", c.bin, append(append([]string{}, c.args...), "-config-file", file), nil)
	if err != nil {
		return err
	}
	c.proc = p
	return nil
}

// ready: a leader is elected and the agent's node is in the catalog. A
// leader alone is not enough: until the agent's first sync, services
// registered with it stay out of the catalog (for a retry interval of tens
// of seconds if that sync failed early).
func (c *Consul) ready(ctx context.Context) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	leader, err := c.Client.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return fmt.Errorf("no leader yet")
	}
	node, _, err := c.Client.Catalog().Node(c.node, q)
	if err != nil {
		return err
	}
	if node == nil || node.Node == nil {
		return fmt.Errorf("agent node %s is not in the catalog yet", c.node)
	}
	return nil
}

// DebugTimeout GETs path from the agent's HTTP API (/debug/pprof: a -dev
// agent, or EnableDebug).
func (c *Consul) DebugTimeout(path string, timeout time.Duration) ([]byte, error) {
	return get("http://"+c.HTTPAddr+path, timeout)
}

// agentConfig renders cfg in Consul's JSON configuration format.
func agentConfig(cfg ConsulConfig) map[string]any {
	out := map[string]any{}
	if cfg.Datacenter != "" {
		out["datacenter"] = cfg.Datacenter
	}
	if cfg.ManagementToken != "" {
		out["acl"] = map[string]any{"enabled": true, "default_policy": "deny",
			"tokens": map[string]any{"initial_management": cfg.ManagementToken, "agent": cfg.ManagementToken}}
	}
	if t := cfg.TLS; t != nil {
		out["ports"] = map[string]any{"https": t.Port}
		out["tls"] = map[string]any{
			"defaults": map[string]any{"ca_file": t.CAFile, "cert_file": t.CertFile, "key_file": t.KeyFile},
			"https":    map[string]any{"verify_incoming": t.VerifyIncoming},
		}
	}
	if cfg.EnableDebug {
		out["enable_debug"] = true
	}
	if cfg.MaxConnsPerClient > 0 {
		out["limits"] = map[string]any{"http_max_conns_per_client": cfg.MaxConnsPerClient}
	}
	var services []map[string]any
	for _, s := range cfg.Services {
		services = append(services, map[string]any{"id": s.ID, "name": s.Name, "address": s.Address, "port": s.Port,
			"check": map[string]any{"id": "ttl-" + s.ID, "ttl": "1h", "status": s.Status}})
	}
	if services != nil {
		out["services"] = services
	}
	return out
}

// PID is the agent's process id.
func (c *Consul) PID() int { return c.proc.PID() }

// Kill ends the agent at once, like a crash.
func (c *Consul) Kill() {
	if c.proc != nil {
		c.proc.Kill()
	}
}

// Pause freezes the agent (SIGSTOP); Resume continues it.
func (c *Consul) Pause() error { return c.proc.Pause() }

// Resume continues a paused agent.
func (c *Consul) Resume() error { return c.proc.Resume() }

// WipeData deletes a stopped server's data directory (ConsulConfig.Server).
func (c *Consul) WipeData() error {
	if !c.config.Server {
		return fmt.Errorf("consul: not started as a server with a data directory")
	}
	return os.RemoveAll(filepath.Join(c.dir, "data"))
}

// Stop stops the agent.
func (c *Consul) Stop() {
	if c.proc != nil {
		c.proc.Stop()
	}
}

// Log returns the agent's log.
func (c *Consul) Log() string { return c.proc.Log() }
