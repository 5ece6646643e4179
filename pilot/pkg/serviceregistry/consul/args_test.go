package consul

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"istio.io/istio/pilot/pkg/serviceregistry/util/xdsfake"
)

func parse(t *testing.T, args ...string) (*pflag.FlagSet, *Args) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	a := &Args{}
	AddFlags(fs, a)
	require.NoError(t, fs.Parse(args))
	return fs, a
}

func TestTokenFlagPrintsRedacted(t *testing.T) {
	fs, a := parse(t, "--consulToken=s3cr3t-token")
	assert.Equal(t, "s3cr3t-token", string(a.Auth.Token))
	// istiod's start-up dump is `FLAG: --name=%q` of flag.Value.
	fs.VisitAll(func(f *pflag.Flag) {
		assert.NotContains(t, f.Value.String(), "s3cr3t", "flag %s", f.Name)
	})
	assert.Equal(t, "<redacted>", fs.Lookup("consulToken").Value.String())
	// istiod also dumps its args (YAML through JSON) and may print them.
	j, err := json.Marshal(a)
	require.NoError(t, err)
	assert.NotContains(t, string(j), "s3cr3t")
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		assert.NotContains(t, fmt.Sprintf(format, *a), "s3cr3t", format)
	}
}

func TestOldFlagSpellingAndEnvFallbacks(t *testing.T) {
	_, a := parse(t, "--consulserverURL=consul.old:8500")
	env := map[string]string{"CONSUL_HTTP_ADDR": "ignored:1", "CONSUL_HTTP_TOKEN": "tok", "CONSUL_CACERT": "/ca.pem",
		"CONSUL_HTTP_SSL": "true"}
	require.NoError(t, a.Complete(func(k string) string { return env[k] }))
	assert.Equal(t, "https://consul.old:8500", a.ServerURL, "flag wins over env; CONSUL_HTTP_SSL picks the scheme")
	assert.Equal(t, "tok", string(a.Auth.Token))
	assert.Equal(t, "/ca.pem", a.Auth.CAFile)

	_, b := parse(t)
	require.NoError(t, b.Complete(func(k string) string { return map[string]string{"CONSUL_HTTP_ADDR": "10.1.1.1:8500"}[k] }))
	assert.Equal(t, "http://10.1.1.1:8500", b.ServerURL)
}

func TestCompleteRejectsBadSettings(t *testing.T) {
	for _, args := range [][]string{
		{"--consulConsistency=eventual"}, {"--consulVIPRange=nope"}, {"--consulMaxConcurrentRequests=0"},
		{"--consulClientCert=/c.pem"},
	} {
		_, a := parse(t, args...)
		err := a.Complete(func(string) string { return "" })
		require.Error(t, err, args)
		assert.True(t, strings.HasPrefix(err.Error(), "--consul"), "error names the flag: %v", err)
	}
}

// An unreachable Consul must not hold istiod's readiness forever.
func TestSyncTimeoutReleasesReadiness(t *testing.T) {
	a := DefaultArgs()
	a.ServerURL = "http://127.0.0.1:1" // nothing listens on port 1
	a.SyncTimeout = time.Second
	require.NoError(t, a.Complete(func(string) string { return "" }))
	reg, err := New(a, Options{XDSUpdater: xdsfake.NewFakeXDS()})
	require.NoError(t, err)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { reg.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()
	assert.Never(t, reg.HasSynced, 500*time.Millisecond, 20*time.Millisecond, "not synced before the timeout")
	assert.Eventually(t, reg.HasSynced, 3*time.Second, 20*time.Millisecond)
	assert.Empty(t, reg.Services())
	assert.False(t, reachable(reg))
}

// --consulSyncTimeout=0 (issue #37, 9): a replica started during a Consul
// outage stays unready for as long as the outage lasts (two simulated
// hours here), so no proxy is handed a configuration without Consul's
// services; it turns ready once Consul answers.
func TestZeroSyncTimeoutWaitsForConsul(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := newScriptedConsul()
		registerMany(sc, 10)
		refused := errors.New("connection refused")
		sc.setFault(func(*http.Request) (*http.Response, error) { return nil, refused })
		reg, side := startScripted(t, sc, func(a *Args) { a.SyncTimeout = 0 })
		settle(2 * time.Hour)
		assert.False(t, reg.HasSynced(), "unready while Consul is down")
		sc.setFault(nil)
		settle(5 * time.Second)
		assert.True(t, reg.HasSynced(), "ready once Consul answers")
		assert.Equal(t, sc.truth(), istiodView(side))
	})
}
