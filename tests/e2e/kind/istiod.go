package kind

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// istiodSelector selects the pods of an istiod revision ("default": the
// one installed without a revision, as the suite's is).
func istiodSelector(revision string) string { return "app=istiod,istio.io/rev=" + revision }

// istiodPod returns a Ready pod of the default revision's istiod (the
// suite's has one replica).
func (c *Cluster) istiodPod(ctx context.Context) (*corev1.Pod, error) {
	return c.revisionPod(ctx, "default")
}

// revisionPod returns a Ready pod of revision's istiod.
func (c *Cluster) revisionPod(ctx context.Context, revision string) (*corev1.Pod, error) {
	name, err := c.waitReadyPod(ctx, "istio-system", istiodSelector(revision))
	if err != nil {
		return nil, err
	}
	return c.kube.Client.CoreV1().Pods("istio-system").Get(ctx, name, metav1.GetOptions{})
}

// istiodDebug GETs a path of istiod's debug/monitoring port (15014), e.g.
// /debug/registryz, through a port-forward to its pod.
func (c *Cluster) istiodDebug(ctx context.Context, pod, path string) ([]byte, error) {
	local, stop, err := portForward(c.kube.Config, "istio-system", pod, 15014)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+local+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("istiod %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("istiod %s: %s: %s", path, resp.Status, b)
	}
	return b, err
}

// istiodLog returns the discovery container's log of pod.
func (c *Cluster) istiodLog(ctx context.Context, pod string) (string, error) {
	b, err := c.kube.Client.CoreV1().Pods("istio-system").GetLogs(pod,
		&corev1.PodLogOptions{Container: "discovery", Timestamps: true}).DoRaw(ctx)
	return string(b), err
}
