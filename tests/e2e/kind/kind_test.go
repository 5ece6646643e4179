//go:build e2ekind

package kind

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// cluster is shared by every case: one kind cluster per run.
var cluster *Cluster

func TestMain(m *testing.M) {
	if err := Preflight(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	cluster, err = Setup(context.Background(), cfg, logf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kind suite setup failed:", err)
		if cluster != nil {
			cluster.DumpIstiodLog()
		}
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 {
		cluster.DumpIstiodLog()
	}
	cluster.Teardown()
	os.Exit(code)
}

// The install the suite did is the one docs/install.md tells users to do: our image,
// the Consul registry on.
func TestInstalledAsUsersDo(t *testing.T) {
	ctx := context.Background()
	d, err := cluster.kube.Client.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	require.NoError(t, err)
	c := d.Spec.Template.Spec.Containers[0]
	assert.Equal(t, cluster.cfg.PilotImage, c.Image)
	assert.Contains(t, c.Args, "--registries=Kubernetes,Consul")
	assert.Contains(t, c.Args, "--consulTokenFile=/var/run/secrets/consul/token/token")

	// The running istiod is the release VERSION names, with our registry.
	pod, err := cluster.istiodPod(ctx)
	require.NoError(t, err)
	v, err := cluster.istiodDebug(ctx, pod.Name, "/version")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(v), harness.IstioRelease()+"+pilot-consul-"), "istiod /version: %s", v)
}

// istiod's Deployment is Ready only once the registry has read Consul: the
// registry logged its sync before the pod turned Ready, and every service
// registered before the install was served at that point.
func TestIstiodReadyOnlyAfterConsulSync(t *testing.T) {
	s := cluster.atReady
	require.False(t, s.syncedAt.IsZero(), "istiod never logged the registry's sync")
	require.False(t, s.readyAt.IsZero(), "istiod's Ready condition not found")
	t.Logf("registry synced at %v, pod Ready at %v", s.syncedAt, s.readyAt)
	// The Ready condition has second precision.
	assert.False(t, s.readyAt.Before(s.syncedAt.Truncate(time.Second)), "istiod was Ready before the registry synced")
	for _, name := range presync {
		assert.Contains(t, s.registryz, name+".service.consul", "served when istiod turned Ready")
	}
}

// The same cases the local suite runs (tests/integration TestSharedCases),
// here with proxyless gRPC pods injected by istiod, in-cluster Consul and our
// images.
func TestSharedCases(t *testing.T) {
	for _, c := range e2e.Cases {
		t.Run(c.Name, func(t *testing.T) { c.Run(t, cluster) })
	}
}

// A meshed server pod registered in Consul with tls-mode=istio and its
// service account gets mutual TLS from a meshed client: the server checks
// the client's SPIFFE identity (AuthorizationPolicy), the client the
// server's (the identity Consul meta names).
func TestMutualTLSFromConsulMeta(t *testing.T) {
	ctx := context.Background()
	ip := cluster.startMeshedServer(t, "secure-0")
	good := "spiffe://cluster.local/ns/" + meshedNS + "/sa/" + meshedSA
	register := func(name, identity string) string {
		require.NoError(t, cluster.consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: name, Name: name, Address: ip, Port: echoPort,
			Meta: map[string]string{"protocol": "grpc", "tls-mode": "istio", "service-account": identity},
		}))
		t.Cleanup(func() { _ = cluster.consul.Agent().ServiceDeregister(name) })
		return name + ".service.consul"
	}
	secure := register("secure", good)
	impostor := register("secure-impostor", "spiffe://cluster.local/ns/elsewhere/sa/someone")
	plain := register("secure-plain", good)
	// Proxyless clients take TLS from a DestinationRule (no auto mTLS) in
	// their own namespace.
	cluster.Apply(t, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: %[1]s}
spec:
  host: %[2]s
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure-impostor, namespace: %[1]s}
spec:
  host: %[3]s
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`, cluster.ClientNamespace(), secure, impostor))
	allow := func(principal string) string {
		return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: %s}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [%q]}}]
`, meshedNS, principal)
	}
	cluster.Apply(t, allow("cluster.local/ns/e2e-client/sa/client"))

	c := cluster.Dial(t, secure+fmt.Sprintf(":%d", echoPort))
	e2e.EventuallyServedBy(t, c, "secure-0")

	// The server requires mTLS (PeerAuthentication STRICT): plaintext fails.
	_, err := cluster.Dial(t, plain+fmt.Sprintf(":%d", echoPort)).Call(5 * time.Second)
	require.Error(t, err, "a plaintext call to a STRICT mTLS server must fail")
	t.Logf("plaintext call refused: %v", err)
	assert.Contains(t, err.Error(), "server preface", "the server must close a plaintext connection, not xDS resolution fail")

	// The client checks the server's identity against Consul's meta.
	_, err = cluster.Dial(t, impostor+fmt.Sprintf(":%d", echoPort)).Call(5 * time.Second)
	require.Error(t, err, "the client must refuse a server whose identity is not the one Consul names")
	t.Logf("server with the wrong identity refused: %v", err)
	assert.Contains(t, err.Error(), "do not match any of the accepted SANs", "the call must fail on the server's identity")

	// The server checks the client's identity: allowing only another
	// principal denies this client.
	require.NoError(t, cluster.kube.Apply(ctx, []byte(allow("cluster.local/ns/elsewhere/sa/someone"))))
	require.Eventually(t, func() bool {
		_, err := c.Call(5 * time.Second)
		return err != nil && strings.Contains(err.Error(), "PermissionDenied")
	}, 60*time.Second, 500*time.Millisecond, "the server never denied a client whose identity the policy does not allow")
}

// A new token written into the Secret, the old one deleted in Consul: istiod
// keeps serving Consul's changes without a restart (kubelet refreshes the
// Secret volume; the registry re-reads the token file).
func TestTokenRotationWithoutRestart(t *testing.T) {
	ctx := context.Background()
	s := e2e.NewService(t, cluster, "rotate", 1, e2e.GRPCMeta, nil)
	c := cluster.Dial(t, s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0))
	before, err := cluster.istiodPod(ctx)
	require.NoError(t, err)

	fresh, err := cluster.newReadToken()
	require.NoError(t, err)
	secrets := cluster.kube.Client.CoreV1().Secrets("istio-system")
	sec, err := secrets.Get(ctx, "istiod-consul-token", metav1.GetOptions{})
	require.NoError(t, err)
	sec.Data = map[string][]byte{"token": []byte(fresh.SecretID)}
	_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	require.NoError(t, err)
	_, err = cluster.consul.ACL().TokenDelete(cluster.istiodToken.AccessorID, nil)
	require.NoError(t, err)
	cluster.istiodToken = fresh
	start := time.Now()

	// Until kubelet refreshes the volume istiod's reads fail (old token
	// gone) and it serves the last good state; then the change arrives.
	s.Add(1, e2e.GRPCMeta, nil)
	require.Eventually(t, func() bool {
		n := e2e.Counts(c, 20)
		return n[s.ID(0)] > 0 && n[s.ID(1)] > 0 && n["error"] == 0
	}, 4*time.Minute, time.Second, "istiod never served the change made after the token rotation")
	t.Logf("change after token rotation served within %v", time.Since(start).Round(time.Second))

	after, err := cluster.istiodPod(ctx)
	require.NoError(t, err)
	assert.Equal(t, before.Name, after.Name, "istiod pod replaced")
	assert.Equal(t, restarts(before), restarts(after), "istiod restarted")
}

// istiod's pod deleted while Consul changes: the new pod serves Consul's truth.
func TestIstiodPodRestart(t *testing.T) {
	ctx := context.Background()
	s := e2e.NewService(t, cluster, "restart", 2, e2e.GRPCMeta, nil)
	c := cluster.Dial(t, s.Target())
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(1))
	old, err := cluster.istiodPod(ctx)
	require.NoError(t, err)

	require.NoError(t, cluster.kube.Client.CoreV1().Pods("istio-system").Delete(ctx, old.Name, metav1.DeleteOptions{}))
	s.SetHealth(1, api.HealthCritical)
	s.Add(2, e2e.GRPCMeta, nil)
	cluster.waitReplaced(t, old)
	e2e.EventuallyServedBy(t, c, s.ID(0), s.ID(2))
}

// waitReplaced waits until a Ready istiod pod other than old serves and old
// is gone, and returns the new pod's name. A client that connects through
// istiod's Service before old is gone may reach it and be cut off when it
// exits: its reconnection resends the whole state.
func (c *Cluster) waitReplaced(t *testing.T, old *corev1.Pod) string {
	t.Helper()
	ctx := context.Background()
	var fresh *corev1.Pod
	require.Eventually(t, func() bool {
		var err error
		fresh, err = c.istiodPod(ctx)
		return err == nil && fresh.Name != old.Name && fresh.DeletionTimestamp == nil
	}, 3*time.Minute, time.Second, "no new istiod pod became Ready")
	require.Eventually(t, func() bool {
		_, err := c.kube.Client.CoreV1().Pods("istio-system").Get(ctx, old.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, 2*time.Minute, time.Second, "the replaced istiod pod %s is still there", old.Name)
	t.Logf("istiod %s replaced by %s", old.Name, fresh.Name)
	c.atReady.pod = fresh.Name
	return fresh.Name
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// Every address the cluster uses is inside 198.18.0.0/15: nodes, pods,
// services, and the node's routes (its default route leads to our Docker
// network's gateway, where our dockerd drops what would leave the range).
func TestAddressesStayInBenchmarkRange(t *testing.T) {
	ctx := context.Background()
	bench := netip.MustParsePrefix("198.18.0.0/15")
	inRange := func(what, addr string) {
		t.Helper()
		a, err := netip.ParseAddr(addr)
		if assert.NoError(t, err, "%s: %q", what, addr) {
			assert.True(t, bench.Contains(a), "%s uses %s, outside %s", what, addr, bench)
		}
	}
	nodes, err := cluster.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
				inRange("node "+n.Name, a.Address)
			}
		}
		out, err := exec.Command("docker", "exec", n.Name, "ip", "-4", "route", "show").CombinedOutput()
		require.NoError(t, err, "%s", out)
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "via" || f[i] == "src" {
					inRange("route "+line, f[i+1])
				}
			}
			if f[0] != "default" {
				dst, _, _ := strings.Cut(f[0], "/")
				inRange("route "+line, dst)
			}
		}
	}
	pods, err := cluster.kube.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, p := range pods.Items {
		for _, ip := range p.Status.PodIPs {
			inRange("pod "+p.Namespace+"/"+p.Name, ip.IP)
		}
	}
	svcs, err := cluster.kube.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	for _, s := range svcs.Items {
		for _, ip := range s.Spec.ClusterIPs {
			if ip != corev1.ClusterIPNone {
				inRange("service "+s.Namespace+"/"+s.Name, ip)
			}
		}
	}
}
