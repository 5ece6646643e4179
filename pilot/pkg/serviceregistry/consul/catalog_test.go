package consul

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
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
