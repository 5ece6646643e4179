package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Cases are the end-to-end cases every environment runs, by name.
var Cases = []struct {
	Name string
	Run  func(t *testing.T, env Env)
}{
	{"BasicCall", BasicCall},
	{"HealthFlip", HealthFlip},
	{"ScaleOutAndIn", ScaleOutAndIn},
	{"SubsetsAndWeightedSplit", SubsetsAndWeightedSplit},
}

// BasicCall: a call to <svc>.service.consul reaches a Consul-registered instance.
func BasicCall(t *testing.T, env Env) {
	s := NewService(t, env, "basic", 1, GRPCMeta, nil)
	c := env.Dial(t, s.Target())
	EventuallyServedBy(t, c, s.ID(0))
}

// HealthFlip: a critical instance stops receiving calls and gets them again
// once passing.
func HealthFlip(t *testing.T, env Env) {
	s := NewService(t, env, "flip", 2, GRPCMeta, nil)
	c := env.Dial(t, s.Target())
	EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	start := time.Now()
	s.SetHealth(1, api.HealthCritical)
	switchTime := WaitUntilGone(t, c, s.ID(1), start)
	t.Logf("Consul critical -> client stopped calling the instance: %v", switchTime)
	assert.Empty(t, Counts(c, 100)[s.ID(1)], "critical instance must get no calls")

	start = time.Now()
	s.SetHealth(1, api.HealthPassing)
	EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	t.Logf("Consul passing -> instance served again within %v", time.Since(start))
}

// ScaleOutAndIn: a new instance gets calls; a deregistered one stops getting them.
func ScaleOutAndIn(t *testing.T, env Env) {
	s := NewService(t, env, "scale", 1, GRPCMeta, nil)
	c := env.Dial(t, s.Target())
	EventuallyServedBy(t, c, s.ID(0))
	s.Add(1, GRPCMeta, nil)
	EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	s.Deregister(0)
	EventuallyServedBy(t, c, s.ID(1))
}

// SubsetsAndWeightedSplit: DestinationRule subsets on Consul tag labels and a
// weighted VirtualService split shape real traffic.
func SubsetsAndWeightedSplit(t *testing.T, env Env) {
	s := NewService(t, env, "reviews", 2, GRPCMeta, func(i int) []string { return []string{fmt.Sprintf("version=v%d", i+1)} })
	c := env.Dial(t, s.Target())
	EventuallyServedBy(t, c, s.ID(0), s.ID(1))

	env.Apply(t, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: %[2]s}
spec:
  host: %[1]s
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: %[2]s}
spec:
  hosts: [%[1]s]
  http:
  - route:
    - {destination: {host: %[1]s, subset: v1}, weight: 80}
    - {destination: {host: %[1]s, subset: v2}, weight: 20}
`, s.Name+".service.consul", env.ClientNamespace()))
	// 1000 calls: v2's share has a standard deviation of ~1.3 points; allow ±6.
	require.Eventually(t, func() bool {
		n := Counts(c, 1000)
		share := float64(n[s.ID(1)]) / 1000
		t.Logf("split: %v (v2 share %.3f)", n, share)
		return n["error"] == 0 && share > 0.14 && share < 0.26
	}, 60*time.Second, 100*time.Millisecond, "80/20 split never observed")
}
