package mcp

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
)

// Consul accepts data istiod's validation refuses. None of it reaches
// istiod as a config it rejects: the registry drops what it cannot express
// (a label that is no label, an identity that is none) or leaves the
// service out with its reason in /debug/consulz, the rest is served, and
// a good service beside them is unaffected. (What the registry would let
// through, the server's own validation stops: mcp/snapshot_test.go.)
func TestBadConsulDataNeverReachesIstiod(t *testing.T) {
	agent := consul.Client.Agent()
	bad := []api.AgentServiceRegistration{
		{ID: "Bad_Name-1", Name: "Bad_Name", Address: "127.0.0.91", Port: 80},
		{ID: "badlabel-1", Name: "badlabel", Address: "127.0.0.92", Port: 80, Tags: []string{"version=v 1", "-x=y"}},
		{ID: "badsa-1", Name: "badsa", Address: "127.0.0.93", Port: 80, Meta: map[string]string{"service-account": "Not Valid!"}},
		{ID: "badzone-1", Name: "badzone", Address: "127.0.0.94", Port: 80, Meta: map[string]string{"zone": "a/b/c/d"}},
		{ID: "badweight-1", Name: "badweight", Address: "127.0.0.95", Port: 80, Meta: map[string]string{"weight": "4294967296"}},
	}
	for _, r := range bad {
		require.NoError(t, agent.ServiceRegister(&r))
		t.Cleanup(func() { _ = agent.ServiceDeregister(r.ID) })
	}
	good := e2e.NewService(t, local, "goodneighbour", 1, e2e.GRPCMeta, nil)
	e2e.EventuallyServedBy(t, local.Dial(t, good.Target()), good.ID(0))

	v := debugMCP(t, server)
	var served []string
	for _, ty := range v.Types {
		if ty.Type == ServiceEntryType {
			served = ty.Names
		}
	}
	for _, name := range []string{"badlabel", "badsa", "badzone", "badweight", "goodneighbour"} {
		assert.Contains(t, served, "consul/consul-"+name)
	}
	b, err := server.Debug("/debug/consulz")
	require.NoError(t, err)
	var consulz struct {
		Registries []struct {
			NotServed []struct {
				Name   string `json:"name"`
				Reason string `json:"reason"`
			} `json:"notServed"`
		} `json:"registries"`
	}
	require.NoError(t, json.Unmarshal(b, &consulz))
	require.Len(t, consulz.Registries, 1)
	assert.True(t, slices.ContainsFunc(consulz.Registries[0].NotServed, func(n struct {
		Name   string `json:"name"`
		Reason string `json:"reason"`
	}) bool {
		return n.Name == "Bad_Name" && n.Reason != ""
	}), "Bad_Name is left out with its reason: %s", b)
	assert.Empty(t, v.Skipped, "the registry let nothing through that istiod would refuse")
	assertNoRejections(t, server, istiod)
}
