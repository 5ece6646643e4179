package integration

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// local is the shared mesh as an e2e environment (set up in TestMain).
var local *e2e.Local

// consulzView is the part of istiod's /debug/consulz the tests read.
type consulzView struct {
	Registries []struct {
		Cluster string `json:"cluster"`
		Consul  struct {
			Reachable bool   `json:"reachable"`
			LastError string `json:"lastError"`
		} `json:"consul"`
		Services []struct {
			Name     string `json:"name"`
			Hostname string `json:"hostname"`
			VIP      string `json:"vip"`
			Shared   *struct {
				Hostname string `json:"hostname"`
				VIP      string `json:"vip"`
			} `json:"shared"`
			Instances []struct {
				ID      string `json:"id"`
				Address string `json:"address"`
				Port    int    `json:"port"`
				Routed  bool   `json:"routed"`
			} `json:"instances"`
			Skipped []struct {
				Instance string `json:"instance"`
				Reason   string `json:"reason"`
			} `json:"skipped"`
		} `json:"services"`
		NotServed []struct {
			Name   string `json:"name"`
			Reason string `json:"reason"`
		} `json:"notServed"`
		HiddenByKubernetes []string `json:"hiddenByKubernetes"`
	} `json:"registries"`
}

// consulz reads istiod's /debug/consulz, narrowed to one service if set.
func consulz(t *testing.T, istiod *harness.Istiod, service string) consulzView {
	t.Helper()
	b, err := istiod.Debug("/debug/consulz?service=" + url.QueryEscape(service))
	require.NoError(t, err)
	var v consulzView
	require.NoError(t, json.Unmarshal(b, &v), string(b))
	require.NotEmpty(t, v.Registries, string(b))
	return v
}
