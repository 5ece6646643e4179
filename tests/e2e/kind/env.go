package kind

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
)

// echoPort is the port every server pod listens on.
const echoPort = 8080

var _ e2e.Env = (*Cluster)(nil)

// Consul implements e2e.Env: the in-cluster Consul through the tunnel,
// with the management token (tests register instances).
func (c *Cluster) Consul() *api.Client { return c.consul }

// StartServer implements e2e.Env: a pod outside the mesh (no sidecar) in
// namespace consul-backends, registered in Consul by its pod IP.
func (c *Cluster) StartServer(t *testing.T, service string, i int) (string, int) {
	t.Helper()
	id := e2e.InstanceID(service, i)
	ctx := context.Background()
	pods := c.kube.Client.CoreV1().Pods("consul-backends")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-" + id, Labels: map[string]string{"app": "echo", "instance": id}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{
				Name: "echo", Image: c.cfg.EchoImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Args:  []string{"serve", "-name", id, "-port", strconv.Itoa(echoPort)},
				Ports: []corev1.ContainerPort{{ContainerPort: echoPort}},
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 1,
					ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(echoPort)}}},
			}},
		},
	}
	_, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = pods.Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	var ip string
	require.Eventually(t, func() bool {
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil || !podReady(p) {
			return false
		}
		ip = p.Status.PodIP
		return ip != ""
	}, 2*time.Minute, time.Second, "server pod %s never ready", pod.Name)
	return ip, echoPort
}

// Dial implements e2e.Env: calls from the client pod's proxyless gRPC stack.
func (c *Cluster) Dial(t *testing.T, target string) e2e.Caller {
	t.Helper()
	return c.client.dial(target)
}

// ClientNamespace implements e2e.Env: the client pod's (manifests/client.yaml).
func (c *Cluster) ClientNamespace() string { return "e2e-client" }

// Apply implements e2e.Env.
func (c *Cluster) Apply(t *testing.T, yaml string) {
	t.Helper()
	require.NoError(t, c.kube.Apply(context.Background(), []byte(yaml)))
	t.Cleanup(func() { _ = c.kube.Delete(context.Background(), []byte(yaml)) })
}

// The meshed server of the mTLS case: its namespace and service account.
const (
	meshedNS = "mtls-server"
	meshedSA = "echo-server"
)

// startMeshedServer runs a proxyless gRPC server (e2e-echo serve -xds) in a
// pod injected with the grpc-agent template, in a namespace with STRICT
// mTLS, behind a Kubernetes Service (istiod builds a proxyless server's
// inbound listener from the services its pod belongs to). Returns its IP.
func (c *Cluster) startMeshedServer(t *testing.T, id string) string {
	t.Helper()
	ctx := context.Background()
	objects := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s, namespace: %[1]s}
---
apiVersion: v1
kind: Service
metadata: {name: echo-secure, namespace: %[1]s}
spec:
  selector: {app: echo-secure}
  ports: [{name: grpc, port: %[3]d, targetPort: %[3]d}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: %[1]s}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Pod
metadata:
  name: %[4]s
  namespace: %[1]s
  labels: {app: echo-secure}
  annotations:
    inject.istio.io/templates: grpc-agent
    proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true}'
spec:
  serviceAccountName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: %[5]s
    imagePullPolicy: IfNotPresent
    args: [serve, -xds, -name, %[4]s, -port, "%[3]d"]
    ports: [{containerPort: %[3]d}]
`, meshedNS, meshedSA, echoPort, id, c.cfg.EchoImage)
	c.Apply(t, objects)
	var ip string
	require.Eventually(t, func() bool {
		p, err := c.kube.Client.CoreV1().Pods(meshedNS).Get(ctx, id, metav1.GetOptions{})
		if err != nil || !podReady(p) {
			return false
		}
		require.NoError(t, checkProxyless(p))
		ip = p.Status.PodIP
		return ip != ""
	}, 3*time.Minute, time.Second, "meshed server pod %s never ready", id)
	return ip
}
