package consul

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// Defect: with default_policy=deny (Consul sends that header on every
// answer), any empty listing counted as hidden by ACLs. In a Consul
// Enterprise namespace or partition, which holds no "consul" service, the
// last service to leave then stayed served forever. The proxy drops
// "consul" from listings, as such a namespace would list them; the
// registry reads with a real token, so Consul flags real filtering.
func TestEmptyNamespaceIsEmpty(t *testing.T) {
	c, err := harness.StartConsul(t, harness.DenyByDefault(rootToken))
	require.NoError(t, err)
	proxy, err := harness.StartFaultProxy(t, c.URL())
	require.NoError(t, err)
	proxy.Answer(func(resp *http.Response) {
		if resp.Request.URL.Path != "/v1/catalog/services" || resp.StatusCode != http.StatusOK {
			return
		}
		var listing map[string][]string
		body, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(body, &listing) == nil {
			delete(listing, "consul")
			body, _ = json.Marshal(listing)
		}
		resp.Body, resp.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	})
	tok, err := harness.CreateReadToken(c.Client)
	require.NoError(t, err)
	f := startRegistry(t, c, func(a *Args) { a.ServerURL, a.Auth.Token = proxy.URL, secret(tok.SecretID) })
	require.NoError(t, c.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "only-1", Name: "only",
		Address: "127.0.0.61", Port: 80}))
	f.waitSynced()
	f.eventuallyEndpoints("only", "127.0.0.61:80")

	require.NoError(t, c.Client.Agent().ServiceDeregister("only-1"))
	assert.Eventually(t, func() bool { return f.reg.GetService("only.service.consul") == nil }, 10*time.Second,
		10*time.Millisecond, "the last service left: %s", lastError(f.reg))
	assert.True(t, reachable(f.reg))
}

// Partial ACLs against a real Consul: a token that reads some services'
// nodes only makes Consul answer [] filtered by ACLs for the others (the
// proxy rewrites three services' answers so). The sync completes without
// them, /debug/consulz says why they are not served, and their retries
// slow down (1 s, 2 s, 4 s...), while the others are served.
func TestPartialACLsThroughAProxy(t *testing.T) {
	f, proxy := behindProxy(t, func(a *Args) { a.SyncTimeout = time.Hour })
	hidden := map[string]bool{"/v1/health/service/acl-1": true, "/v1/health/service/acl-2": true, "/v1/health/service/acl-3": true}
	var mu sync.Mutex
	reads := map[string][]time.Time{} // hidden path -> when each refused answer was given
	readsOf := func(path string) []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(reads[path])
	}
	proxy.Answer(func(resp *http.Response) {
		if !hidden[resp.Request.URL.Path] {
			return
		}
		mu.Lock()
		reads[resp.Request.URL.Path] = append(reads[resp.Request.URL.Path], time.Now())
		mu.Unlock()
		resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader("[]")), 2
		resp.Header.Set("Content-Length", "2")
		resp.Header.Set("X-Consul-Results-Filtered-By-ACLs", "true")
	})
	for i := range 10 {
		f.register(api.AgentServiceRegistration{ID: fmt.Sprintf("acl-%d", i), Name: fmt.Sprintf("acl-%d", i),
			Address: "127.0.0.65", Port: 80 + i})
	}
	require.Eventually(t, f.reg.HasSynced, 20*time.Second, 20*time.Millisecond, "registry never synced: %s, %+v",
		lastError(f.reg), f.reg.debugView("").NotServed)
	f.eventuallyEndpoints("acl-9", "127.0.0.65:89")
	require.Eventually(t, func() bool { return len(f.reg.debugView("").NotServed) == 3 }, 10*time.Second, 10*time.Millisecond,
		"not served: %+v", f.reg.debugView("").NotServed)
	for _, n := range f.reg.debugView("").NotServed {
		assert.Contains(t, n.Reason, "the token needs read on its nodes (node_prefix)", n.Name)
	}
	// Once the registry is idle (during the sync, a mark of the listing may
	// read a refused service again at once), each refused service's reads
	// are its retries alone: each waits its jittered delay, 1 s doubling
	// (at least half of it, at most all), so every gap is at least 0.5 s
	// and no shorter than the one before. Lower bounds hold on a loaded
	// machine too; a service retried at once has gaps of milliseconds.
	settled(t, f.reg)
	from := map[string]int{}
	for path := range hidden {
		from[path] = len(readsOf(path))
	}
	for path := range hidden {
		require.Eventually(t, func() bool { return len(readsOf(path)) >= from[path]+3 }, 90*time.Second, 10*time.Millisecond,
			"%s is retried", path)
		at := readsOf(path)[from[path]-1:]
		prev := time.Duration(0)
		for i := 1; i < len(at); i++ {
			gap := at[i].Sub(at[i-1])
			t.Logf("%s: a retry after %v", path, gap.Round(time.Millisecond))
			assert.GreaterOrEqual(t, gap, serviceRetryMin/2-10*time.Millisecond, "%s: retried at once", path)
			assert.GreaterOrEqual(t, gap, prev-10*time.Millisecond, "%s: retried slower and slower", path)
			prev = gap
		}
	}
	assert.True(t, reachable(f.reg))
}
