package consul

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
	"istio.io/istio/pkg/config/host"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

const rootToken = "7b1b0f1e-0000-4000-8000-000000000001"

// lastError is what /debug/consulz says of the last failed read.
func lastError(reg *Controller) string { return reg.debugView("-").Consul.LastError }

// Consul with acl { enabled = true, default_policy = "deny" } and a
// read-only token (service_prefix / node_prefix read), as operators run it.
func TestACLTokens(t *testing.T) {
	c, err := harness.StartConsul(t, harness.DenyByDefault(rootToken))
	require.NoError(t, err)
	root := c.Client
	reg := func(id, name, addr string) {
		require.NoError(t, root.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Address: addr, Port: 80}))
	}
	reg("web-1", "web", "127.0.0.11")
	tok, err := harness.CreateReadToken(root)
	require.NoError(t, err)
	readOnly := tok.SecretID
	wrong := "00000000-0000-4000-8000-00000000dead"

	t.Run("no token: a clear error, never synced, nothing served", func(t *testing.T) {
		f := startRegistry(t, c, func(a *Args) { a.SyncTimeout = time.Hour })
		require.Eventually(t, func() bool { return lastError(f.reg) != "" }, 10*time.Second, 20*time.Millisecond)
		assert.Contains(t, lastError(f.reg), "ACLs filtered out every result")
		assert.Contains(t, lastError(f.reg), "needs read on service_prefix and node_prefix")
		assert.False(t, f.reg.HasSynced())
		assert.Empty(t, f.reg.Services())
	})
	t.Run("wrong token: ACL not found", func(t *testing.T) {
		f := startRegistry(t, c, func(a *Args) { a.Auth.Token = secret(wrong); a.SyncTimeout = time.Hour })
		require.Eventually(t, func() bool { return lastError(f.reg) != "" }, 10*time.Second, 20*time.Millisecond)
		assert.Contains(t, lastError(f.reg), "ACL not found")
		assert.NotContains(t, lastError(f.reg), wrong, "the token never appears in errors")
	})
	t.Run("token file: syncs, survives a bad rotation with its last good state, recovers", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "token")
		require.NoError(t, os.WriteFile(file, []byte(readOnly+"\n"), 0o600))
		f := startRegistry(t, c, func(a *Args) { a.Auth.TokenFile = file; a.WaitTime = time.Second })
		f.waitSynced()
		f.eventuallyEndpoints("web", "127.0.0.11:80")

		require.NoError(t, os.WriteFile(file, []byte(wrong), 0o600))
		// One reading of the status: a read sent before the rotation may
		// still succeed after one sent after it failed.
		require.Eventually(t, func() bool {
			v := f.reg.debugView("-").Consul
			return !v.Reachable && strings.Contains(v.LastError, "ACL not found")
		}, 10*time.Second, 20*time.Millisecond, "unreachable with the ACL error")
		assert.Equal(t, []string{"127.0.0.11:80"}, f.endpoints("web"), "a bad token must not wipe endpoints")

		reg("api-1", "api", "127.0.0.12")
		require.NoError(t, os.WriteFile(file, []byte(readOnly), 0o600))
		f.eventuallyEndpoints("api", "127.0.0.12:80")
		assert.Empty(t, lastError(f.reg))
	})
}

// HTTPS to Consul with CA verification, server-name override and Consul's
// verify_incoming (client certificate required).
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := harness.NewCA(dir, "consul")
	require.NoError(t, err)
	srvCert, srvKey, err := ca.Issue("server", []string{"server.dc1.consul"}, nil) // no IP SAN on purpose
	require.NoError(t, err)
	cliCert, cliKey, err := ca.Issue("istiod", []string{"istiod"}, nil)
	require.NoError(t, err)
	other, err := harness.NewCA(dir, "other")
	require.NoError(t, err)
	ports, err := harness.FreePorts(1)
	require.NoError(t, err)
	c, err := harness.StartConsul(t, func(c *harness.ConsulConfig) {
		c.TLS = &harness.ConsulTLS{Port: ports[0], CAFile: ca.CertFile, CertFile: srvCert, KeyFile: srvKey, VerifyIncoming: true}
	})
	require.NoError(t, err)
	require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80}))
	https := "https://127.0.0.1:" + strconv.Itoa(ports[0])

	for _, tc := range []struct {
		name    string
		edit    func(*Args)
		wantErr string
	}{
		{"right CA, client cert, server name: syncs", func(a *Args) {
			a.Auth.CAFile, a.Auth.CertFile, a.Auth.KeyFile, a.Auth.TLSServerName = ca.CertFile, cliCert, cliKey, "server.dc1.consul"
		}, ""},
		{"wrong CA", func(a *Args) {
			a.Auth.CAFile, a.Auth.CertFile, a.Auth.KeyFile, a.Auth.TLSServerName = other.CertFile, cliCert, cliKey, "server.dc1.consul"
		}, "certificate signed by unknown authority"},
		{"no client certificate while Consul verifies incoming", func(a *Args) {
			a.Auth.CAFile, a.Auth.TLSServerName = ca.CertFile, "server.dc1.consul"
		}, "certificate required"},
		{"no server-name override: name mismatch", func(a *Args) {
			a.Auth.CAFile, a.Auth.CertFile, a.Auth.KeyFile = ca.CertFile, cliCert, cliKey
		}, "x509: cannot validate certificate for 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startRegistry(t, c, func(a *Args) {
				a.ServerURL, a.SyncTimeout = https, time.Hour
				tc.edit(a)
			})
			if tc.wantErr == "" {
				f.waitSynced()
				f.eventuallyEndpoints("web", "127.0.0.11:80")
				return
			}
			require.Eventually(t, func() bool { return lastError(f.reg) != "" }, 10*time.Second, 20*time.Millisecond)
			assert.Contains(t, lastError(f.reg), tc.wantErr)
			assert.False(t, f.reg.HasSynced())
		})
	}
}

// Defect (issue #37, 2): the CA, client certificate and key were loaded
// once. With short-lived client certificates or a CA rotation, every new
// connection failed after the switch until istiod restarted. Here all
// three are rotated to a new CA, and Consul (a server with a data
// directory, verify_incoming) restarts on the new material, so every
// connection after it is new: the registry follows Consul on, and the
// changes made before and after the restart are all served.
func TestTLSMaterialIsReloaded(t *testing.T) {
	live := t.TempDir()
	issue := func(name string) (caPEM, srvPEM, srvKey, cliPEM, cliKey []byte) {
		dir := t.TempDir()
		ca, err := harness.NewCA(dir, name)
		require.NoError(t, err)
		sc, sk, err := ca.Issue("server", []string{"server.dc1.consul"}, nil)
		require.NoError(t, err)
		cc, ck, err := ca.Issue("istiod", []string{"istiod"}, nil)
		require.NoError(t, err)
		read := func(f string) []byte {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			return b
		}
		return read(ca.CertFile), read(sc), read(sk), read(cc), read(ck)
	}
	// put replaces a live file as rotation tools do: write aside, rename.
	put := func(name string, data []byte) string {
		path := filepath.Join(live, name)
		require.NoError(t, os.WriteFile(path+".new", data, 0o600))
		require.NoError(t, os.Rename(path+".new", path))
		return path
	}
	install := func(caPEM, srvPEM, srvKey, cliPEM, cliKey []byte) {
		put("ca.pem", caPEM)
		put("server.pem", srvPEM)
		put("server-key.pem", srvKey)
		put("client.pem", cliPEM)
		put("client-key.pem", cliKey)
	}
	install(issue("ca-1"))
	ports, err := harness.FreePorts(1)
	require.NoError(t, err)
	tlsCfg := &harness.ConsulTLS{Port: ports[0], CAFile: filepath.Join(live, "ca.pem"),
		CertFile: filepath.Join(live, "server.pem"), KeyFile: filepath.Join(live, "server-key.pem"), VerifyIncoming: true}
	c, err := harness.StartConsul(t, func(c *harness.ConsulConfig) { c.Server, c.TLS = true, tlsCfg })
	require.NoError(t, err)
	f := startRegistry(t, c, func(a *Args) {
		a.ServerURL, a.SyncTimeout = "https://127.0.0.1:"+strconv.Itoa(ports[0]), time.Hour
		a.Auth.CAFile, a.Auth.TLSServerName = filepath.Join(live, "ca.pem"), "server.dc1.consul"
		a.Auth.CertFile, a.Auth.KeyFile = filepath.Join(live, "client.pem"), filepath.Join(live, "client-key.pem")
	})
	f.register(api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.11", Port: 80})
	f.waitSynced()
	f.eventuallyEndpoints("web", "127.0.0.11:80")

	c.Stop()
	// Changed while Consul is down, seen only once it is back.
	install(issue("ca-2"))
	require.NoError(t, c.Start())
	f.setHealth("web-1", api.HealthPassing) // a restarted agent's TTL checks start critical
	f.register(api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.12", Port: 80})
	f.register(api.AgentServiceRegistration{ID: "api-1", Name: "api", Address: "127.0.0.21", Port: 80})
	f.eventuallyEndpoints("web", "127.0.0.11:80", "127.0.0.12:80")
	f.eventuallyEndpoints("api", "127.0.0.21:80")
	f.setHealth("web-1", api.HealthCritical)
	f.eventuallyEndpoints("web", "127.0.0.12:80")
	assert.True(t, reachable(f.reg), "last error: %s", lastError(f.reg))
}

// runAll starts registries and stops them at cleanup.
func runAll(t *testing.T, regs []*Controller) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, r := range regs {
		wg.Go(func() { r.Run(stop) })
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
}

func newRegistries(t *testing.T, edit func(*Args)) []*Controller {
	args := DefaultArgs()
	args.WaitTime = 2 * time.Second
	edit(&args)
	require.NoError(t, args.Complete(func(string) string { return "" }))
	insts, err := NewRegistries(args, Options{XDSUpdater: xdsfake.NewFakeXDS()})
	require.NoError(t, err)
	regs := make([]*Controller, len(insts))
	for i, r := range insts {
		regs[i] = r.(*Controller)
	}
	runAll(t, regs)
	return regs
}

func endpointsOf(r *Controller, h host.Name) []*model.IstioEndpoint {
	if s := r.store.byHostname(h); s != nil {
		return s.endpoints
	}
	return nil
}

// Two real Consul servers, WAN-joined: dc1 keeps short hostnames, dc2's
// services are <svc>.service.dc2.consul, and the locality region is the DC.
func TestDatacenters(t *testing.T) {
	dc1, dc2 := wanJoined(t)
	require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w1", Name: "web", Address: "127.0.0.21", Port: 80}))
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w2", Name: "web", Address: "127.0.0.22", Port: 80}))

	regs := newRegistries(t, func(a *Args) { a.ServerURL, a.Datacenter = dc1.URL(), "dc1,dc2" })
	require.Len(t, regs, 2)
	assert.Equal(t, "consul", string(regs[0].Cluster()))
	assert.Equal(t, "consul-dc2", string(regs[1].Cluster()))
	for _, tc := range []struct {
		reg        *Controller
		host, addr string
		dc         string
	}{{regs[0], "web.service.consul", "127.0.0.21", "dc1"}, {regs[1], "web.service.dc2.consul", "127.0.0.22", "dc2"}} {
		require.Eventually(t, func() bool { return len(endpointsOf(tc.reg, host.Name(tc.host))) == 1 }, 20*time.Second, 20*time.Millisecond, tc.host)
		ep := endpointsOf(tc.reg, host.Name(tc.host))[0]
		assert.Equal(t, tc.addr, ep.Addresses[0])
		assert.Equal(t, tc.dc, ep.Locality.Label)
	}
}

// --consulDatacenterFailover: dc2's registry also serves its instances as
// web.service.consul (dc1's hostname), with dc2 as their locality and the
// VIP dc1's registry gives that hostname; a service only dc2 has gets the
// short hostname too; dc2's own hostnames stay.
func TestDatacenterFailover(t *testing.T) {
	dc1, dc2 := wanJoined(t)
	require.NoError(t, dc1.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w1", Name: "web", Address: "127.0.0.21", Port: 80}))
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w2", Name: "web", Address: "127.0.0.22", Port: 80}))
	require.NoError(t, dc2.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "a2", Name: "api", Address: "127.0.0.23", Port: 81}))

	regs := newRegistries(t, func(a *Args) {
		a.ServerURL, a.Datacenter, a.DatacenterFailover = dc1.URL(), "dc1,dc2", true
	})
	local, remote := regs[0], regs[1]
	served := func(r *Controller, h host.Name) []string {
		var out []string
		for _, ep := range endpointsOf(r, h) {
			out = append(out, ep.Addresses[0]+"@"+ep.Locality.Label)
		}
		return out
	}
	// dc2's consul, web and api, each under two hostnames.
	require.Eventually(t, func() bool {
		return len(remote.Services()) == 6 && len(served(remote, "api.service.consul")) == 1 &&
			len(served(local, "web.service.consul")) == 1 && len(served(remote, "web.service.consul")) == 1
	}, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"127.0.0.21@dc1"}, served(local, "web.service.consul"))
	assert.Equal(t, []string{"127.0.0.22@dc2"}, served(remote, "web.service.consul"), "dc2's instances under dc1's hostname")
	assert.Equal(t, []string{"127.0.0.22@dc2"}, served(remote, "web.service.dc2.consul"), "a client can still pin dc2")
	assert.Equal(t, []string{"127.0.0.23@dc2"}, served(remote, "api.service.consul"), "only dc2 has it")

	hosts := map[string]string{}
	for _, s := range remote.Services() {
		hosts[string(s.Hostname)] = s.DefaultAddress
	}
	assert.ElementsMatch(t, []string{"web.service.consul", "web.service.dc2.consul", "api.service.consul", "api.service.dc2.consul",
		"consul.service.consul", "consul.service.dc2.consul"}, slices.Collect(maps.Keys(hosts)))
	shared := remote.GetService("web.service.consul")
	require.NotNil(t, shared)
	assert.Equal(t, host.Name("web.service.consul"), shared.Hostname)
	assert.Equal(t, local.GetService("web.service.consul").DefaultAddress, shared.DefaultAddress, "one VIP for one hostname")
	assert.NotEqual(t, hosts["web.service.dc2.consul"], shared.DefaultAddress)
	view := remote.debugView("web.service.consul")
	require.Len(t, view.Services, 1)
	assert.Equal(t, "web.service.consul", view.Services[0].Shared.Hostname)

	// dc1's web leaves: dc2's still answers under the shared hostname.
	require.NoError(t, dc1.Client.Agent().ServiceDeregister("w1"))
	require.Eventually(t, func() bool { return local.GetService("web.service.consul") == nil }, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"127.0.0.22@dc2"}, served(remote, "web.service.consul"))
	assert.Equal(t, shared.DefaultAddress, remote.GetService("web.service.consul").DefaultAddress, "the VIP stays")

	// dc2's Consul goes down: its instances stay served, under both names.
	dc2.Stop()
	require.Eventually(t, func() bool { return !reachable(remote) }, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"127.0.0.22@dc2"}, served(remote, "web.service.consul"), "dc2's last good state")
	assert.Equal(t, []string{"127.0.0.23@dc2"}, served(remote, "api.service.dc2.consul"))
	assert.True(t, reachable(local), "dc1 untouched")
}

// Defect: each registry allocated VIPs from --consulVIPRange on its own,
// so two Consul clusters' (or datacenters') services got the same address,
// and a hostname both serve could get two. The registries of one istiod
// share one table: every hostname one VIP, every VIP one hostname.
func TestRegistriesShareTheVIPRange(t *testing.T) {
	east, err := harness.StartConsul(t)
	require.NoError(t, err)
	west, err := harness.StartConsul(t)
	require.NoError(t, err)
	for i := range 6 {
		for _, c := range []struct {
			c    *harness.Consul
			name string
		}{{east, fmt.Sprintf("east-%d", i)}, {west, fmt.Sprintf("west-%d", i)}} {
			require.NoError(t, c.c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: c.name, Name: c.name, Address: "127.0.0.51", Port: 80}))
		}
	}
	for _, c := range []*harness.Consul{east, west} {
		require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web", Name: "web", Address: "127.0.0.52", Port: 80}))
	}
	// 16 hostnames (each cluster's consul service too) in 30 addresses:
	// two tables of their own almost surely collide.
	regs := newRegistries(t, func(a *Args) {
		a.ServerURL, a.Mapping.VIPRange = "east="+east.URL()+",west="+west.URL(), "240.241.0.0/27"
	})
	for _, r := range regs {
		require.Eventually(t, func() bool { return len(r.Services()) == 8 }, 20*time.Second, 20*time.Millisecond)
	}
	byVIP := map[string]host.Name{}
	for _, r := range regs {
		for _, s := range r.Services() {
			require.NotEmpty(t, s.DefaultAddress, s.Hostname)
			if other, ok := byVIP[s.DefaultAddress]; ok {
				assert.Equal(t, other, s.Hostname, "VIP %s given to two hostnames", s.DefaultAddress)
			}
			byVIP[s.DefaultAddress] = s.Hostname
		}
	}
	assert.Len(t, byVIP, 14, "web and consul are served by both, under one VIP each")
}

// wanJoined starts two real Consul servers, dc1 and dc2, WAN-joined.
func wanJoined(t *testing.T) (dc1, dc2 *harness.Consul) {
	dc1, dc2, err := harness.StartDatacenters(t)
	require.NoError(t, err)
	return dc1, dc2
}

// Two independent Consul clusters are two registries with their own shards:
// one going down leaves the other untouched (and keeps its own last state).
func TestSeveralConsulClusters(t *testing.T) {
	east, err := harness.StartConsul(t)
	require.NoError(t, err)
	west, err := harness.StartConsul(t)
	require.NoError(t, err)
	require.NoError(t, east.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "e", Name: "web", Address: "127.0.0.31", Port: 80}))
	require.NoError(t, west.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w", Name: "web", Address: "127.0.0.32", Port: 80}))

	regs := newRegistries(t, func(a *Args) { a.ServerURL = "east=" + east.URL() + ",west=" + west.URL() })
	require.Len(t, regs, 2)
	assert.NotEqual(t, model.ShardKeyFromRegistry(regs[0]), model.ShardKeyFromRegistry(regs[1]))
	assert.Equal(t, "east", string(regs[0].Cluster()))
	for i, addr := range []string{"127.0.0.31", "127.0.0.32"} {
		require.Eventually(t, func() bool {
			eps := endpointsOf(regs[i], "web.service.consul")
			return len(eps) == 1 && eps[0].Addresses[0] == addr
		}, 20*time.Second, 20*time.Millisecond)
	}
	west.Stop()
	require.Eventually(t, func() bool { return !reachable(regs[1]) }, 20*time.Second, 20*time.Millisecond)
	assert.Len(t, endpointsOf(regs[1], "web.service.consul"), 1, "west keeps its last good state")
	assert.Len(t, endpointsOf(regs[0], "web.service.consul"), 1, "east untouched")
	assert.Empty(t, lastError(regs[0]))
}

// Consul Enterprise namespace and partition go on every request (open-source
// Consul rejects them, so a recording proxy strips them before forwarding)
// and into hostnames, per Consul's DNS form.
func TestEnterpriseScoping(t *testing.T) {
	c, err := harness.StartConsul(t)
	require.NoError(t, err)
	require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "w", Name: "web", Address: "127.0.0.41", Port: 80}))
	proxy, err := harness.StartFaultProxy(t, c.URL())
	require.NoError(t, err)
	var mu sync.Mutex
	var seen []url.Values
	proxy.Rewrite(func(r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Query())
		mu.Unlock()
		q := r.URL.Query()
		q.Del("ns")
		q.Del("partition")
		r.URL.RawQuery = q.Encode()
	})

	regs := newRegistries(t, func(a *Args) {
		a.ServerURL, a.EnterpriseNamespace, a.Partition, a.Datacenter = proxy.URL, "team-a", "part-1", "dc1,dc9"
	})
	require.Eventually(t, func() bool { return regs[0].GetService("web.service.team-a.ns.part-1.ap.consul") != nil },
		20*time.Second, 20*time.Millisecond)
	assert.Equal(t, host.Name("web.service.team-a.ns.part-1.ap.dc9.dc.consul"), regs[1].conv.hostname("web"))
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, seen)
	for _, q := range seen {
		assert.Equal(t, "team-a", q.Get("ns"))
		assert.Equal(t, "part-1", q.Get("partition"))
	}
}
