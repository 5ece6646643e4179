package kind

import (
	"context"
	"crypto/rand"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

var (
	//go:embed cluster.yaml
	clusterConfig string
	//go:embed manifests/consul.yaml
	consulManifest string
	//go:embed manifests/client.yaml
	clientManifest string
	//go:embed manifests/coredns.yaml
	corednsManifest string
)

// Cluster is a kind cluster with Consul, our istiod and a client pod.
type Cluster struct {
	cfg       Config
	dir       string // kubeconfig, logs
	kube      *harness.Kube
	rootToken string
	consul    *api.Client
	// istiodToken is the ACL token istiod reads Consul with (the Secret's).
	istiodToken *api.ACLToken
	// atReady is what istiod showed when istioctl install saw it Ready.
	atReady    readySnapshot
	stopTunnel func()
	logf       func(string, ...any)
	client     *meshClient // the suite's client pod (Dial)
}

// Setup creates the cluster and installs everything; on error, what was
// created is torn down (unless cfg.Keep).
func Setup(ctx context.Context, cfg Config, logf func(string, ...any)) (c *Cluster, err error) {
	dir, err := os.MkdirTemp("", "pilot-consul-kind-")
	if err != nil {
		return nil, err
	}
	c = &Cluster{cfg: cfg, dir: dir, rootToken: rand.Text(), logf: logf}
	defer func() {
		if err != nil {
			c.Teardown()
		}
	}()
	steps := []struct {
		what string
		do   func(context.Context) error
	}{
		{"creating kind cluster " + cfg.Cluster + " (node image " + cfg.NodeImage + ")", c.create},
		{"cluster DNS without any upstream", c.configureDNS},
		{"loading images " + strings.Join(c.images(), ", "), c.loadImages},
		{"deploying Consul (ACL default deny) and a read-only token for istiod", c.deployConsul},
		{fmt.Sprintf("registering %d Consul services for istiod to sync at start-up", len(presync)), c.registerPresync},
		{"installing Istio with out/istioctl and build/install/istio-operator.yaml", c.installIstio},
		{"reading istiod's registry as it turned Ready", c.snapshotAtReady},
		{"deploying the client pod (proxyless gRPC, injected by istiod)", c.deployClient},
	}
	for _, s := range steps {
		logf(">> %s", s.what)
		start := time.Now()
		if err := s.do(ctx); err != nil {
			return c, fmt.Errorf("%s: %w", s.what, err)
		}
		logf("   done in %v", time.Since(start).Round(time.Second))
	}
	return c, nil
}

// Teardown deletes the cluster (kept with KEEP=1, with a note how to reach it).
func (c *Cluster) Teardown() {
	if c.client != nil {
		c.client.close()
	}
	if c.stopTunnel != nil {
		c.stopTunnel()
	}
	if c.cfg.Keep {
		c.logf(">> KEEP set: cluster %s left up (kubeconfig %s; 'kind delete cluster --name %s' removes it)",
			c.cfg.Cluster, c.kubeconfig(), c.cfg.Cluster)
		return
	}
	if err := run(context.Background(), kindBin(), "delete", "cluster", "--name", c.cfg.Cluster); err != nil {
		c.logf("deleting kind cluster %s: %v", c.cfg.Cluster, err)
	}
	_ = os.RemoveAll(c.dir)
}

func (c *Cluster) kubeconfig() string { return filepath.Join(c.dir, "kubeconfig") }

func (c *Cluster) create(ctx context.Context) error {
	config := filepath.Join(c.dir, "cluster.yaml")
	if err := os.WriteFile(config, []byte(KindConfig(c.cfg)), 0o644); err != nil {
		return err
	}
	if err := run(ctx, kindBin(), "create", "cluster", "--name", c.cfg.Cluster, "--kubeconfig", c.kubeconfig(),
		"--image", c.cfg.NodeImage, "--config", config, "--wait", "3m"); err != nil {
		return err
	}
	var err error
	c.kube, err = harness.ConnectKube(c.kubeconfig())
	return err
}

// KindConfig is tests/e2e/kind/cluster.yaml for cfg's node image: a
// published kind node image brings its own CNI (kindnetd), ours has a
// static ptp config and needs none.
func KindConfig(cfg Config) string {
	if cfg.OwnNodeImage {
		return clusterConfig
	}
	return strings.Replace(clusterConfig, "disableDefaultCNI: true", "disableDefaultCNI: false", 1)
}

// configureDNS replaces kubeadm's CoreDNS configuration, which forwards
// unknown names to the node's resolver (and from there off the machine), by
// one that answers cluster names only. Our CoreDNS build has no forward
// plugin, so kubeadm's Corefile cannot even start it: nothing was forwarded.
func (c *Cluster) configureDNS(ctx context.Context) error {
	if !c.cfg.OwnNodeImage {
		c.logf("   published node image: its CoreDNS is left as it is")
		return nil
	}
	if err := c.kube.Apply(ctx, []byte(corednsManifest)); err != nil {
		return err
	}
	if err := c.kube.Client.CoreV1().Pods("kube-system").DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"}); err != nil {
		return err
	}
	_, err := c.waitReadyPod(ctx, "kube-system", "k8s-app=kube-dns")
	return err
}

func (c *Cluster) images() []string {
	return []string{c.cfg.PilotImage, c.cfg.ProxyHub + "/proxyv2:" + c.cfg.ProxyTag, c.cfg.EchoImage, c.cfg.ConsulImage,
		c.cfg.MCPImage, c.cfg.UpstreamPilotImage, c.cfg.PreviousPilotImage, c.cfg.ProxyHub + "/proxyv2:" + c.cfg.PreviousProxyTag}
}

func (c *Cluster) loadImages(ctx context.Context) error {
	for _, img := range c.images() {
		if err := run(ctx, kindBin(), "load", "docker-image", img, "--name", c.cfg.Cluster); err != nil {
			return err
		}
	}
	return nil
}

// deployConsul runs Consul, opens a tunnel to it for the suite, and stores a
// read-only token (service_prefix and node_prefix read: what istiod needs)
// in the Secret the overlay mounts.
func (c *Cluster) deployConsul(ctx context.Context) error {
	m := strings.NewReplacer("CONSUL_IMAGE", c.cfg.ConsulImage, "CONSUL_ROOT_TOKEN", c.rootToken).Replace(consulManifest)
	if err := c.kube.Apply(ctx, []byte(m)); err != nil {
		return err
	}
	pod, err := c.waitReadyPod(ctx, "consul", "app=consul-server")
	if err != nil {
		return err
	}
	local, stop, err := portForward(c.kube.Config, "consul", pod, 8500)
	if err != nil {
		return err
	}
	c.stopTunnel = stop
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = local, c.rootToken
	if c.consul, err = api.NewClient(cfg); err != nil {
		return err
	}
	// The ACL system bootstraps right after the leader election the
	// readiness probe waits for: retry briefly.
	for start := time.Now(); ; {
		if c.istiodToken, err = harness.CreateReadToken(c.consul); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			return err
		}
		time.Sleep(time.Second)
	}
	if err := c.kube.EnsureNamespace(ctx, "istio-system"); err != nil {
		return err
	}
	_, err = c.kube.Client.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod-consul-token"},
		StringData: map[string]string{"token": c.istiodToken.SecretID},
	}, metav1.CreateOptions{})
	return err
}

// newReadToken creates a Consul ACL token with the read policy istiod needs.
func (c *Cluster) newReadToken() (*api.ACLToken, error) { return harness.CreateReadToken(c.consul) }

// installIstio runs the patched tree's istioctl with our overlay, exactly as
// docs/install.md tells users to.
func (c *Cluster) installIstio(ctx context.Context) error { return c.install(ctx, OverlayArgs(c.cfg)) }

func (c *Cluster) install(ctx context.Context, overlay []string) error {
	return c.istioctl(ctx, append([]string{"install", "-y"}, overlay...)...)
}

// istioctl runs the patched tree's istioctl (the release's, with nothing of
// ours in it) against the cluster.
func (c *Cluster) istioctl(ctx context.Context, args ...string) error {
	return run(ctx, filepath.Join(harness.OutDir(), "istioctl"), append(args, "--kubeconfig", c.kubeconfig())...)
}

// OverlayArgs are the istioctl args (files and --set) the suite installs
// Istio with; tests/install renders the same with `manifest generate`.
func OverlayArgs(cfg Config) []string {
	return append([]string{
		"-f", filepath.Join(harness.Root(), "build/install/istio-operator.yaml"),
		"-f", filepath.Join(harness.Root(), "tests/e2e/kind/istio-e2e.yaml"),
		"--set", "values.pilot.image=" + cfg.PilotImage,
		"--set", "hub=" + cfg.ProxyHub, "--set", "tag=" + cfg.ProxyTag,
	}, smallIstiod...)
}

// AmbientOverlayArgs are OverlayArgs with the ambient profile, pilot only
// (tests/e2e/kind/istio-ambient.yaml).
func AmbientOverlayArgs(cfg Config) []string {
	return append(OverlayArgs(cfg), "-f", filepath.Join(harness.Root(), "tests/e2e/kind/istio-ambient.yaml"))
}

// checkProxyless checks that istiod's webhook injected the grpc-agent
// template: an istio-proxy container (pilot-agent, no Envoy) and the app
// told where the agent writes its gRPC xDS bootstrap.
func checkProxyless(p *corev1.Pod) error {
	var agent, bootstrap bool
	for _, ct := range p.Spec.Containers {
		if ct.Name == "istio-proxy" {
			agent = true
			continue
		}
		for _, e := range ct.Env {
			bootstrap = bootstrap || e.Name == "GRPC_XDS_BOOTSTRAP"
		}
	}
	if !agent || !bootstrap {
		return fmt.Errorf("pod %s/%s was not injected with the grpc-agent template (istio-proxy: %v, GRPC_XDS_BOOTSTRAP: %v)",
			p.Namespace, p.Name, agent, bootstrap)
	}
	return nil
}

// waitReadyPod waits for a Ready pod matching selector and returns its name.
func (c *Cluster) waitReadyPod(ctx context.Context, ns, selector string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		pods, err := c.kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			for _, p := range pods.Items {
				if podReady(&p) {
					return p.Name, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no ready pod %s in %s: %w", selector, ns, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func kindBin() string {
	p, err := harness.Binary("kind")
	if err != nil {
		return "kind" // from PATH; the error shows when it runs
	}
	return p
}

// run runs a command with its output on stderr (cluster creation and
// installs are long: the user sees progress).
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

// DumpIstiodLog prints istiod's last log lines (after a failed case).
func (c *Cluster) DumpIstiodLog() {
	if c.kube == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod, err := c.waitReadyPod(ctx, "istio-system", istiodSelector("default"))
	if err != nil {
		c.logf("istiod log: %v", err)
		return
	}
	tail := int64(80)
	b, err := c.kube.Client.CoreV1().Pods("istio-system").GetLogs(pod, &corev1.PodLogOptions{Container: "discovery", TailLines: &tail}).DoRaw(ctx)
	if err != nil {
		c.logf("istiod log: %v", err)
		return
	}
	c.logf("istiod log tail:\n%s", b)
}

// MCPOverlayArgs install the release's istiod as shipped with consul-mcp
// beside it (build/install/mcp-operator.yaml, written into dir with the
// suite's consul-mcp image, the one thing a user edits in it).
func MCPOverlayArgs(cfg Config, dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(harness.Root(), "build/install/mcp-operator.yaml"))
	if err != nil {
		return nil, err
	}
	re := regexp.MustCompile(`image: \S+/consul-mcp:\S+`)
	if !re.Match(b) {
		return nil, fmt.Errorf("build/install/mcp-operator.yaml names no consul-mcp image")
	}
	overlay := filepath.Join(dir, "mcp-operator.yaml")
	if err := os.WriteFile(overlay, re.ReplaceAll(b, []byte("image: "+cfg.MCPImage)), 0o644); err != nil {
		return nil, err
	}
	return append([]string{
		"-f", overlay,
		"-f", filepath.Join(harness.Root(), "tests/e2e/kind/istio-e2e.yaml"),
		"--set", "values.pilot.image=" + cfg.UpstreamPilotImage,
		"--set", "hub=" + cfg.ProxyHub, "--set", "tag=" + cfg.ProxyTag,
	}, smallIstiod...), nil
}
