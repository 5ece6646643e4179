package kind

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
)

// presync are Consul services registered before Istio is installed: istiod
// must have read all of them before it reports Ready. Their addresses are
// in the pod subnet and never dialled.
var presync = func() []string {
	names := make([]string, 50)
	for i := range names {
		names[i] = fmt.Sprintf("presync-%02d", i)
	}
	return names
}()

// readySnapshot is istiod as istioctl install left it: Ready.
type readySnapshot struct {
	pod       string
	readyAt   time.Time // the Ready condition's transition
	syncedAt  time.Time // the registry's "synced" log line
	registryz string    // /debug/registryz right after install returned
}

func (c *Cluster) registerPresync(context.Context) error {
	for i, name := range presync {
		err := c.consul.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: name, Name: name, Address: fmt.Sprintf("198.19.239.%d", i+1), Port: 8080,
			Meta:  map[string]string{"protocol": "grpc"},
			Check: &api.AgentServiceCheck{CheckID: "ttl-" + name, TTL: "1h", Status: api.HealthPassing},
		})
		if err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
	return nil
}

// syncedLine is the registry's log line when its first full read is applied
// (pilot/pkg/serviceregistry/consul), with the timestamp kubelet adds.
var syncedLine = regexp.MustCompile(`(?m)^(\S+) .*consul registry \S+ synced: \d+ services`)

func (c *Cluster) snapshotAtReady(ctx context.Context) error {
	pod, err := c.istiodPod(ctx)
	if err != nil {
		return err
	}
	s := readySnapshot{pod: pod.Name}
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			s.readyAt = cond.LastTransitionTime.Time
		}
	}
	b, err := c.istiodDebug(ctx, pod.Name, "/debug/registryz")
	if err != nil {
		return err
	}
	s.registryz = string(b)
	logs, err := c.istiodLog(ctx, pod.Name)
	if err != nil {
		return err
	}
	if m := syncedLine.FindStringSubmatch(logs); m != nil {
		if s.syncedAt, err = time.Parse(time.RFC3339Nano, m[1]); err != nil {
			return fmt.Errorf("timestamp of %q: %w", m[0], err)
		}
	}
	c.atReady = s
	return nil
}
