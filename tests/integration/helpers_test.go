package integration

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// service is a Consul service whose instances are real local gRPC servers.
type service struct {
	t      *testing.T
	consul *api.Client
	name   string
	port   int
}

// ip returns a distinct loopback address per test and instance.
func ip(t *testing.T, i int) string {
	sum := 0
	for _, c := range t.Name() {
		sum = (sum*31 + int(c)) % 200
	}
	return fmt.Sprintf("127.0.%d.%d", 10+sum, 10+i)
}

// newService starts n instances of name on distinct loopback IPs and one
// shared port, registered in Consul with passing TTL checks.
func newService(t *testing.T, name string, n int, meta map[string]string, tags func(i int) []string) *service {
	t.Helper()
	return newServiceOn(t, mesh.Consul.Client, name, n, meta, tags)
}

// newServiceOn is newService on a given Consul.
func newServiceOn(t *testing.T, consul *api.Client, name string, n int, meta map[string]string, tags func(i int) []string) *service {
	t.Helper()
	ips := make([]string, n+4)
	for i := range ips {
		ips[i] = ip(t, i)
	}
	port, err := harness.FreePortOn(ips...)
	require.NoError(t, err)
	s := &service{t: t, consul: consul, name: name, port: port}
	for i := range n {
		var tg []string
		if tags != nil {
			tg = tags(i)
		}
		s.add(i, meta, tg)
	}
	return s
}

func (s *service) id(i int) string { return fmt.Sprintf("%s-%d", s.name, i) }

// add starts and registers instance i.
func (s *service) add(i int, meta map[string]string, tags []string) {
	s.t.Helper()
	_, err := harness.StartWorkload(s.t, s.id(i), ip(s.t, i), s.port)
	require.NoError(s.t, err)
	s.register(i, meta, tags)
	s.t.Cleanup(func() { _ = s.consul.Agent().ServiceDeregister(s.id(i)) })
}

// register (re-)registers instance i in Consul (its server keeps running).
func (s *service) register(i int, meta map[string]string, tags []string) {
	s.t.Helper()
	require.NoError(s.t, s.consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: s.id(i), Name: s.name, Address: ip(s.t, i), Port: s.port, Meta: meta, Tags: tags,
		Check: &api.AgentServiceCheck{CheckID: "ttl-" + s.id(i), TTL: "1h", Status: api.HealthPassing},
	}))
}

func (s *service) setHealth(i int, status string) {
	s.t.Helper()
	require.NoError(s.t, s.consul.Agent().UpdateTTL("ttl-"+s.id(i), "", status))
}

func (s *service) target() string { return fmt.Sprintf("%s.service.consul:%d", s.name, s.port) }

// dial opens an xDS channel to the service, closed at cleanup.
func dial(t *testing.T, target string) *harness.Conn {
	t.Helper()
	c, err := mesh.XDS.Dial(target)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// counts makes n calls and counts answers per instance; errors count as "error".
func counts(c *harness.Conn, n int) map[string]int {
	out := map[string]int{}
	for range n {
		who, err := c.Call(5 * time.Second)
		if err != nil {
			who = "error"
		}
		out[who]++
	}
	return out
}

// eventuallyServedBy calls until, within one window of calls, exactly the
// wanted instances answer; it returns how long that took.
func eventuallyServedBy(t *testing.T, c *harness.Conn, want ...string) time.Duration {
	t.Helper()
	sort.Strings(want)
	start := time.Now()
	var last map[string]int
	for time.Since(start) < 30*time.Second {
		last = counts(c, 10*len(want))
		got := make([]string, 0, len(last))
		for k := range last {
			got = append(got, k)
		}
		sort.Strings(got)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return time.Since(start)
		}
	}
	t.Fatalf("never served by exactly %v; last window: %v", want, last)
	return 0
}

// waitUntilGone measures how long until calls stop reaching instance gone:
// the time of the first call of a streak of 50 that never hit it.
func waitUntilGone(t *testing.T, c *harness.Conn, gone string, since time.Time) time.Duration {
	t.Helper()
	streak, streakStart := 0, time.Now()
	for time.Since(since) < 30*time.Second {
		callAt := time.Now()
		who, err := c.Call(5 * time.Second)
		require.NoError(t, err)
		if who == gone {
			streak = 0
			continue
		}
		if streak == 0 {
			streakStart = callAt
		}
		if streak++; streak == 50 {
			return streakStart.Sub(since)
		}
	}
	t.Fatalf("calls still reach %s after 30s", gone)
	return 0
}
