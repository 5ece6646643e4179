package harness

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

// ConsulCluster is a Consul cluster on loopback as production runs one:
// servers with Raft and data directories (not -dev), and client agents,
// each its own process, joined over Serf. Relay is the agentless way in.
type ConsulCluster struct {
	Servers []*Consul
	Agents  []*Consul
	// Relay is one address in front of every server's HTTP port that picks
	// the next server for each connection, as a load balancer in front of
	// the servers does (consul-k8s's agentless install).
	Relay *Relay
}

// StartConsulCluster starts servers and then client agents, waits until a
// leader is elected and every member is in the catalog, and starts the
// relay. All of it stops at the env's cleanup.
func StartConsulCluster(env Env, servers, agents int) (*ConsulCluster, error) {
	c := &ConsulCluster{}
	var join []string
	for range servers {
		s, err := NewConsul(env, func(cfg *ConsulConfig) { cfg.Cluster = &ClusterMember{Servers: servers} })
		if err != nil {
			return nil, err
		}
		c.Servers = append(c.Servers, s)
		join = append(join, s.SerfLANAddr)
	}
	for _, s := range c.Servers {
		s.config.Cluster.Join = join
		s.args = append(s.args, retryJoin(join)...)
		if err := s.Launch(); err != nil {
			return nil, err
		}
	}
	for _, s := range c.Servers {
		if err := s.WaitReady(); err != nil {
			return nil, err
		}
	}
	for range agents {
		a, err := NewConsul(env, func(cfg *ConsulConfig) { cfg.Cluster = &ClusterMember{Join: join} })
		if err != nil {
			return nil, err
		}
		if err := a.Start(); err != nil {
			return nil, err
		}
		c.Agents = append(c.Agents, a)
	}
	var backends []string
	for _, s := range c.Servers {
		backends = append(backends, s.HTTPAddr)
	}
	relay, err := StartRelay(env, backends)
	if err != nil {
		return nil, err
	}
	c.Relay = relay
	return c, nil
}

func retryJoin(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, "-retry-join", a)
	}
	return out
}

// Leader returns the index in Servers of the Raft leader, asking the
// servers in order until one answers (a killed or paused one cannot).
func (c *ConsulCluster) Leader() (int, error) {
	var last error
	for _, s := range c.Servers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		leader, err := s.Client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err != nil {
			last = err
			continue
		}
		if i := slices.IndexFunc(c.Servers, func(s *Consul) bool { return s.ServerAddr == leader }); i >= 0 {
			return i, nil
		}
		last = fmt.Errorf("no leader (a server says %q)", leader)
	}
	return -1, fmt.Errorf("consul cluster leader: %w", last)
}

// WaitLeader waits until a leader other than not is elected (-1: any).
func (c *ConsulCluster) WaitLeader(not int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		i, err := c.Leader()
		if err == nil && i != not {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no new leader within %v (last: %d, %v)", timeout, i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Voters is the number of servers in the Raft configuration that are voters.
func (c *ConsulCluster) Voters(via int) (int, error) {
	cfg, err := c.Servers[via].Client.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return 0, fmt.Errorf("raft configuration: %w", err)
	}
	n := 0
	for _, s := range cfg.Servers {
		if s.Voter {
			n++
		}
	}
	return n, nil
}
