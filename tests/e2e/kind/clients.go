package kind

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/e2e"
)

// meshClient is the proxyless pod "client" of one namespace
// (manifests/client.yaml), which the suite calls from.
type meshClient struct {
	c      *Cluster
	ns     string
	labels string // the namespace's labels, YAML flow style: which istiod injects it
	mu     sync.Mutex
	// session is the one `e2e-echo client` process running in the pod, for
	// one target: grpc-go (since 1.66) opens an xDS stream per channel
	// target, and the pod's agent serves a single stream, closing the
	// previous one on each new one (istio/istio#53532). Switching targets
	// restarts the process.
	session *execSession
}

// manifest is the client's namespace, service account and pod.
func (m *meshClient) manifest() string {
	return strings.NewReplacer("CLIENT_NAMESPACE", m.ns, "NAMESPACE_LABELS", m.labels,
		"ECHO_IMAGE", m.c.cfg.EchoImage).Replace(clientManifest)
}

// deploy creates the client's objects and waits until the pod, injected
// with the grpc-agent template, is Ready.
func (m *meshClient) deploy(ctx context.Context) error {
	// A revision's webhook may not answer for a few seconds after its
	// install reported it Ready (seen right after istioctl install
	// --revision: "failed calling webhook ... context deadline exceeded");
	// the pod is created once it does.
	for start := time.Now(); ; {
		err := m.c.kube.Apply(ctx, []byte(m.manifest()))
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "failed calling webhook") || time.Since(start) > time.Minute {
			return err
		}
		m.c.logf("   %s: the injection webhook does not answer yet (%v); retrying", m.ns, err)
		time.Sleep(2 * time.Second)
	}
	pod, err := m.c.waitReadyPod(ctx, m.ns, "app=client")
	if err != nil {
		return err
	}
	p, err := m.c.kube.Client.CoreV1().Pods(m.ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	return checkProxyless(p)
}

// newClient deploys a client in a namespace of its own, labelled with
// labels, and deletes the namespace at t's cleanup.
func (c *Cluster) newClient(t *testing.T, ns, labels string) *meshClient {
	t.Helper()
	m := &meshClient{c: c, ns: ns, labels: labels}
	t.Cleanup(func() {
		m.close()
		_ = c.kube.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	require.NoError(t, m.deploy(context.Background()), "client in %s", ns)
	return m
}

// restart deletes the client pod and creates it again: the webhook its
// namespace selects now injects it. Returns the revision that did.
func (m *meshClient) restart(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	m.close()
	pods := m.c.kube.Client.CoreV1().Pods(m.ns)
	require.NoError(t, pods.Delete(ctx, "client", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		_, err := pods.Get(ctx, "client", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}, 2*time.Minute, 500*time.Millisecond, "client pod in %s never went away", m.ns)
	require.NoError(t, m.deploy(ctx), "client in %s", m.ns)
	return m.revision(t)
}

// revision is the istiod revision that injected the pod (the injector's
// annotation istio.io/rev).
func (m *meshClient) revision(t *testing.T) string {
	t.Helper()
	p, err := m.c.kube.Client.CoreV1().Pods(m.ns).Get(context.Background(), "client", metav1.GetOptions{})
	require.NoError(t, err)
	return p.Annotations["istio.io/rev"]
}

// relabel replaces the namespace's injection labels (istio-injection and
// istio.io/rev) by labels, a key=value list.
func (m *meshClient) relabel(t *testing.T, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	nss := m.c.kube.Client.CoreV1().Namespaces()
	ns, err := nss.Get(ctx, m.ns, metav1.GetOptions{})
	require.NoError(t, err)
	delete(ns.Labels, "istio-injection")
	delete(ns.Labels, "istio.io/rev")
	var flow []string
	for k, v := range labels {
		ns.Labels[k] = v
		flow = append(flow, k+": "+v)
	}
	_, err = nss.Update(ctx, ns, metav1.UpdateOptions{})
	require.NoError(t, err)
	m.labels = strings.Join(flow, ", ")
}

// call makes one call to target from the pod's proxyless gRPC stack.
func (m *meshClient) call(target string, timeout time.Duration) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.session == nil || m.session.ended() || m.session.target != target {
		if m.session != nil {
			m.session.Close()
		}
		pod, err := m.c.waitReadyPod(context.Background(), m.ns, "app=client")
		if err != nil {
			return "", err
		}
		if m.session, err = startExecSession(m.c.kube.Config, m.c.kube.Client, m.ns, pod, "client", target); err != nil {
			return "", err
		}
	}
	return m.session.call(timeout)
}

func (m *meshClient) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.session != nil {
		m.session.Close()
		m.session = nil
	}
}

// dial is an e2e.Caller for target from this client.
func (m *meshClient) dial(target string) e2e.Caller { return sessionCaller{m, target} }

// sessionCaller is an e2e.Caller for one target.
type sessionCaller struct {
	m      *meshClient
	target string
}

func (s sessionCaller) Call(timeout time.Duration) (string, error) {
	return s.m.call(s.target, timeout)
}

// clientEnv is the suite's e2e.Env with calls made from another client:
// the shared cases through another istiod.
type clientEnv struct {
	*Cluster
	m *meshClient
}

func (e clientEnv) Dial(t *testing.T, target string) e2e.Caller { return e.m.dial(target) }
func (e clientEnv) ClientNamespace() string                     { return e.m.ns }

// callLoop calls a target from a client without pause until stopped,
// counting the calls and the failed ones.
type callLoop struct {
	stopc        chan struct{}
	done         chan struct{}
	calls, fails int
	firstErrs    []string
	servedBy     map[string]int
}

// loop starts calling target from m; target must already be served.
func (m *meshClient) loop(target string) *callLoop {
	l := &callLoop{stopc: make(chan struct{}), done: make(chan struct{}), servedBy: map[string]int{}}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopc:
				return
			default:
			}
			who, err := m.call(target, 5*time.Second)
			l.calls++
			if err != nil {
				l.fails++
				if len(l.firstErrs) < 5 {
					l.firstErrs = append(l.firstErrs, time.Now().Format("15:04:05.000 ")+err.Error())
				}
				continue
			}
			l.servedBy[who]++
		}
	}()
	return l
}

// stop ends the loop and asserts that no call failed and that calls were
// made all along (at least min); it logs the count under what.
func (l *callLoop) stop(t *testing.T, what string, min int) {
	t.Helper()
	close(l.stopc)
	<-l.done
	t.Logf("%s: %d calls, %d failed (served by %v)", what, l.calls, l.fails, l.servedBy)
	require.Zero(t, l.fails, "%s: failed calls, first: %s", what, strings.Join(l.firstErrs, "; "))
	require.GreaterOrEqual(t, l.calls, min, "%s: too few calls to tell", what)
}

// unreachable asserts that target has no route from m: the istiod it is
// connected to does not serve it.
func (m *meshClient) unreachable(t *testing.T, target string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := m.call(target, 3*time.Second)
		return err != nil
	}, time.Minute, time.Second, "%s is still served to the client in %s", target, m.ns)
}

// deployClient deploys the suite's client (namespace e2e-client, the
// default revision's injection) and the namespace of Consul's servers.
func (c *Cluster) deployClient(ctx context.Context) error {
	if err := c.kube.EnsureNamespace(ctx, "consul-backends"); err != nil { // outside the mesh: no injection
		return err
	}
	c.client = &meshClient{c: c, ns: "e2e-client", labels: "istio-injection: enabled"}
	return c.client.deploy(ctx)
}

// podNames lists the names of the pods matching selector in ns.
func (c *Cluster) podNames(ctx context.Context, ns, selector string) ([]string, error) {
	pods, err := c.kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			names = append(names, p.Name)
		}
	}
	return names, nil
}

// waitConnected calls through c until an istiod pod of revision lists the
// client's pod among its xDS connections, and returns how long that took:
// a proxyless client learns of changes again only then.
func (m *meshClient) waitConnected(t *testing.T, c e2e.Caller, revision string) time.Duration {
	t.Helper()
	ctx := context.Background()
	p, err := m.c.kube.Client.CoreV1().Pods(m.ns).Get(ctx, "client", metav1.GetOptions{})
	require.NoError(t, err)
	start := time.Now()
	require.Eventually(t, func() bool {
		_, _ = c.Call(5 * time.Second)
		pods, err := m.c.podNames(ctx, "istio-system", istiodSelector(revision))
		if err != nil {
			return false
		}
		for _, pod := range pods {
			b, err := m.c.istiodDebug(ctx, pod, "/debug/connections")
			if err == nil && strings.Contains(string(b), p.Status.PodIP) {
				return true
			}
		}
		return false
	}, 3*time.Minute, 500*time.Millisecond, "the client in %s never connected to istiod revision %s", m.ns, revision)
	return time.Since(start)
}
