package integration

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Bounds of the cluster cases (docs/reliability.md). istiod runs with a
// 10 s blocking wait and a 2 s request timeout, so a watch held by a
// paused server is given up within 10 + 10/16 + 2 s. A server that lost
// its leader answers stale reads for max_stale (5 s) more, so a blocking
// read sent then fails only one wait later.
const (
	clusterWait    = 10 * time.Second
	clusterTimeout = 2 * time.Second
	pausedBound    = clusterWait + clusterWait/16 + clusterTimeout + 3*time.Second
	// Through a client agent, a service's blocking query is answered from
	// the agent's streaming view (Consul's default backend), fed by one gRPC
	// subscription to a server. When that server freezes the view goes
	// stale and keeps answering, without an error, until the agent's gRPC
	// keepalive (a ping after 30 s without traffic, 10 s for its answer)
	// drops the connection and the view subscribes to another server:
	// Consul's bound for every reader of that agent, + 3 s.
	agentPausedBound = 30*time.Second + 10*time.Second + 3*time.Second
	// Consul's production Raft timing (raft_multiplier 5) elects a new
	// leader 5 to 13 s after the old one dies (seen here).
	electionBound = 30 * time.Second
	// Autopilot removes a dead server from Raft and promotes it back to
	// voter only once it has been stable for server_stabilization_time
	// (10 s) and autopilot next reconciles: 0.3 to 17.8 s seen.
	rejoinBound = 40 * time.Second
	// Unreachable is reported when a read fails after the last one that
	// succeeded. Measured 2.2–22.4 s since the registry holds four watches
	// (5.1–11.6 s with three): a read has been seen to succeed ~10 s into
	// the outage, so the bound allows one more wait (docs/reliability.md).
	unreachableBound = 5*time.Second + pausedBound + clusterWait
)

// reader is one istiod reading the cluster, with a client calling a stable
// service through it all along.
type reader struct {
	name   string
	istiod *harness.Istiod
	conn   *harness.Conn
	probe  *prober
	// pausedBound: how soon it follows Consul while a server is paused.
	pausedBound time.Duration
}

// The Consul topologies production runs: three servers (Raft, data
// directories, not -dev) and two client agents, read by two istiods at
// once, one through a client agent and one agentless, through a relay in
// front of the servers that picks a server per connection. Workloads
// register through the other client agent. The raft leader is killed while
// instances flip and (de)register, rejoins, a follower is paused (SIGSTOP)
// while reads reach it, and two servers are paused (the third is cut off
// from any leader). Clients calling through each istiod never fail, and
// istiod follows Consul's truth within the bounds above.
func TestConsulCluster(t *testing.T) {
	cl, err := harness.StartConsulCluster(t, 3, 2)
	require.NoError(t, err)
	env := &e2e.Local{ConsulClient: cl.Agents[1].Client}
	stable := e2e.NewService(t, env, "stable", 2, e2e.GRPCMeta, nil)
	var churned []*e2e.Service
	for i := range 3 {
		churned = append(churned, e2e.NewService(t, env, fmt.Sprintf("churn-%d", i), 3, e2e.GRPCMeta, nil))
	}
	args := []string{"--consulWaitTime=" + clusterWait.String(), "--consulRequestTimeout=" + clusterTimeout.String()}
	var readers []*reader
	for _, via := range []struct {
		name, url   string
		pausedBound time.Duration
	}{{"agent", cl.Agents[0].URL(), agentPausedBound}, {"agentless", cl.Relay.URL, pausedBound}} {
		name, url := via.name, via.url
		istiod, err := harness.StartIstiod(t, mesh.Kube, url, args...)
		require.NoError(t, err)
		x, err := harness.NewXDSClient(istiod.XDSAddr, "default")
		require.NoError(t, err)
		conn, err := x.Dial(stable.Target())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		e2e.EventuallyServedBy(t, conn, stable.ID(0), stable.ID(1))
		readers = append(readers, &reader{name: name, istiod: istiod, conn: conn, probe: startProber(t, conn), pausedBound: via.pausedBound})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range readers {
				t.Logf("istiod (%s) log tail:\n%s", r.name, r.istiod.Tail(40))
			}
		}
	})
	truth := cl.Agents[1].Client
	// converged waits until every reader serves Consul's truth for every
	// churned service, within its bound of the catalog showing it: the
	// reader's pausedBound after a server was paused.
	converged := func(phase string, paused bool) {
		t.Helper()
		for _, r := range readers {
			bound := reconvergeBound
			if paused {
				bound = r.pausedBound
			}
			worst := time.Duration(0)
			for _, s := range churned {
				worst = max(worst, waitConverged(t, r.istiod, truth, s))
			}
			t.Logf("%s: %s converged %v after Consul's catalog (bound %v)", phase, r.name, worst.Round(time.Millisecond), bound)
			assert.LessOrEqual(t, worst, bound, "%s: %s", phase, r.name)
		}
	}
	noFailedCalls := func(phase string) {
		t.Helper()
		for _, r := range readers {
			calls, failures := r.probe.calls.Load(), r.probe.failures.Load()
			t.Logf("%s: %s: %d calls, %d failed", phase, r.name, calls, failures)
			assert.Zero(t, failures, "%s: %s: calls failed (last: %v)", phase, r.name, r.probe.lastErr.Load())
		}
	}
	converged("start", false)

	t.Run("leader killed during churn", func(t *testing.T) {
		stop := churn(t, truth, churned)
		time.Sleep(2 * time.Second)
		old, err := cl.Leader()
		require.NoError(t, err)
		killed := time.Now()
		cl.Servers[old].Kill()
		leader, err := cl.WaitLeader(old, electionBound)
		require.NoError(t, err)
		t.Logf("server %d killed; server %d leads %v later", old, leader, time.Since(killed).Round(time.Millisecond))
		time.Sleep(3 * time.Second) // churn goes on under the new leader
		t.Logf("%d changes", stop())
		converged("leader killed", false)
		noFailedCalls("leader killed")

		t.Run("old leader rejoins", func(t *testing.T) {
			start := time.Now()
			require.NoError(t, cl.Servers[old].Start())
			require.Eventually(t, func() bool { n, err := cl.Voters(leader); return err == nil && n == 3 },
				rejoinBound, 100*time.Millisecond, "three voters again")
			t.Logf("server %d restarted; three voters %v later", old, time.Since(start).Round(time.Millisecond))
			stop := churn(t, truth, churned)
			time.Sleep(2 * time.Second)
			t.Logf("%d changes", stop())
			converged("rejoined", false)
			noFailedCalls("rejoined")
		})
	})

	t.Run("follower paused while reads reach it", func(t *testing.T) {
		leader, err := cl.Leader()
		require.NoError(t, err)
		follower := (leader + 1) % len(cl.Servers)
		pause(t, cl.Servers[follower])
		stop := churn(t, truth, churned)
		time.Sleep(3 * time.Second)
		t.Logf("%d changes", stop())
		converged("follower paused", true)
		noFailedCalls("follower paused")
		require.NoError(t, cl.Servers[follower].Resume())
	})

	t.Run("two servers paused: the third has no leader", func(t *testing.T) {
		leader, err := cl.Leader()
		require.NoError(t, err)
		paused := []int{leader, (leader + 1) % len(cl.Servers)}
		for _, i := range paused {
			pause(t, cl.Servers[i])
		}
		start := time.Now()
		for _, r := range readers {
			require.Eventually(t, func() bool {
				v := consulz(t, r.istiod, "-").Registries[0].Consul
				return !v.Reachable
			}, unreachableBound, 100*time.Millisecond, "%s: Consul without a leader is unreachable", r.name)
			v := consulz(t, r.istiod, "-").Registries[0].Consul
			t.Logf("%s: unreachable after %v: %s", r.name, time.Since(start).Round(time.Millisecond), v.LastError)
		}
		served := map[string]map[string]int{}
		for _, r := range readers {
			served[r.name] = e2e.Counts(r.conn, 20)
			assert.Zero(t, served[r.name]["error"], "%s: the last good state is served", r.name)
		}
		for _, i := range paused {
			require.NoError(t, cl.Servers[i].Resume())
		}
		_, err = cl.WaitLeader(-1, electionBound)
		require.NoError(t, err)
		stop := churn(t, truth, churned)
		time.Sleep(3 * time.Second)
		t.Logf("%d changes", stop())
		converged("leader back", true)
		noFailedCalls("two servers paused")
	})
}

// pause freezes a server until resumed, or until the (sub)test ends:
// clean-ups that reach Consul through an agent hang while it has no leader.
func pause(t *testing.T, s *harness.Consul) {
	t.Helper()
	require.NoError(t, s.Pause())
	t.Cleanup(func() { _ = s.Resume() })
}

// churn flips the health of instances 1 and 2 of each service and
// deregisters and re-registers instance 2, every 50 ms, until the returned
// stop is called; it returns the number of changes made.
func churn(t *testing.T, consul *api.Client, services []*e2e.Service) (stop func() int) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var n atomic.Int64
	wg.Go(func() {
		statuses := []string{api.HealthCritical, api.HealthPassing, api.HealthWarning, api.HealthPassing}
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			s := services[i%len(services)]
			inst := 1 + (i/len(services))%2
			var err error
			switch (i / (2 * len(services))) % 5 {
			case 3:
				err = consul.Agent().ServiceDeregister(s.ID(2))
			case 4:
				err = consul.Agent().ServiceRegister(s.Registration(2, e2e.GRPCMeta, nil))
			default:
				err = consul.Agent().UpdateTTL("ttl-"+s.ID(inst), "", statuses[i%len(statuses)])
			}
			if err == nil {
				n.Add(1)
			}
		}
	})
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(done); wg.Wait() })
		return int(n.Load())
	}
	t.Cleanup(func() { stop() })
	return stop
}
