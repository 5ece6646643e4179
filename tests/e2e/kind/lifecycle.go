package kind

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// The installs an operator's lifecycle goes through (docs/install.md):
// the release's istiod as shipped, ours beside it as a canary revision,
// in-place upgrades and rollbacks, replicas. Each is istioctl with an
// overlay, or Helm with the release's own istiod chart.

// canary is the revision our istiod is installed as beside another.
const canary = "consul"

// smallIstiod keeps istiod's requests (chart default: 500m, 2 GiB) small
// enough for every install of the suite on the kind node (2 CPUs, 1.45 of
// them requested before any istiod): two revisions side by side, two
// replicas, and a rolling update's surge of each (maxSurge 100%).
var smallIstiod = []string{"--set", "values.pilot.resources.requests.cpu=100m",
	"--set", "values.pilot.resources.requests.memory=256Mi"}

// UpstreamOverlayArgs install the release's istiod as shipped, as an
// operator already running Istio has it: no overlay of ours.
func UpstreamOverlayArgs(cfg Config) []string {
	return append([]string{
		"-f", filepath.Join(harness.Root(), "tests/e2e/kind/istio-e2e.yaml"),
		"--set", "values.pilot.image=" + cfg.UpstreamPilotImage,
		"--set", "hub=" + cfg.ProxyHub, "--set", "tag=" + cfg.ProxyTag,
	}, smallIstiod...)
}

// CanaryOverlayArgs install ours beside the default revision, as revision
// canary: `istioctl install --revision consul` with the suite's overlay.
func CanaryOverlayArgs(cfg Config) []string {
	return append([]string{"--revision", canary}, OverlayArgs(cfg)...)
}

// ReplicaOverlayArgs install ours with two replicas (the chart adds a
// PodDisruptionBudget when there is more than one, without autoscaling).
func ReplicaOverlayArgs(cfg Config) []string {
	return append(OverlayArgs(cfg), "--set", "values.pilot.replicaCount=2", "--set", "values.pilot.autoscaleEnabled=false")
}

// HelmIstiod is an istiod the canary and upgrade cases install with Helm as
// revision canary (release "istiod-consul").
type HelmIstiod struct {
	Release  string // the Istio release whose istiod chart installs it
	Image    string // istiod's image
	ProxyTag string // the proxy tag (hub: Config.ProxyHub) its injector gives pods
	Consul   bool   // our registry on: build/install/values.yaml
}

// helmRelease is the Helm release name of the canary revision.
const helmRelease = "istiod-" + canary

// IstiodChart is the istiod chart in release's source tree, as published
// (no patch of ours touches manifests/).
func IstiodChart(release string) string {
	return filepath.Join(harness.Root(), "_work", release, "istio", "manifests/charts/istio-control/istio-discovery")
}

// HelmArgs are the chart, values and flags of `helm install|upgrade
// istiod-consul`: what docs/install.md tells users, plus the suite's images
// and small requests.
func HelmArgs(cfg Config, h HelmIstiod) []string {
	args := []string{IstiodChart(h.Release), "--namespace", "istio-system"}
	if h.Consul {
		args = append(args, "-f", filepath.Join(harness.Root(), "build/install/values.yaml"))
	}
	return append(args, "--set", "revision="+canary, "--set", "image="+h.Image,
		"--set", "global.hub="+cfg.ProxyHub, "--set", "global.tag="+h.ProxyTag,
		"--set", "global.imagePullPolicy=IfNotPresent",
		"--set", "resources.requests.cpu=100m", "--set", "resources.requests.memory=256Mi",
		"--wait", "--timeout", "5m")
}

// helm runs the helm CLI (built from its module) against the cluster, with
// its cache and configuration in the suite's directory.
func (c *Cluster) helm(ctx context.Context, args ...string) error {
	bin, err := harness.Binary("helm")
	if err != nil {
		return err
	}
	home := filepath.Join(c.dir, "helm")
	cmd := exec.CommandContext(ctx, bin, append(args, "--kubeconfig", c.kubeconfig())...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helm %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// waitRollout waits until deployment name in istio-system has rolled out
// its current template: every replica updated and Ready, and no pod of an
// older template left, terminating or not.
func (c *Cluster) waitRollout(ctx context.Context, name string) (*appsv1.Deployment, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	deployments := c.kube.Client.AppsV1().Deployments("istio-system")
	for {
		d, err := deployments.Get(ctx, name, metav1.GetOptions{})
		if err == nil && rolledOut(d) {
			sel := metav1.FormatLabelSelector(d.Spec.Selector)
			pods, err := c.kube.Client.CoreV1().Pods("istio-system").List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err == nil && len(pods.Items) == int(*d.Spec.Replicas) {
				return d, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("deployment %s never rolled out: %w", name, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func rolledOut(d *appsv1.Deployment) bool {
	want := *d.Spec.Replicas
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.ReadyReplicas == want &&
		s.AvailableReplicas == want && s.Replicas == want
}
