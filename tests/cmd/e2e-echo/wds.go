package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"istio.io/istio/pkg/workloadapi"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// wds subscribes to istiod's WDS as ztunnel does and prints a
// harness.WDSView line each time the service (namespace/hostname) changes,
// with the names of its resources received since the previous line, until
// killed.
func wds(args []string) error {
	fs := flag.NewFlagSet("wds", flag.ExitOnError)
	xds := fs.String("xds", "istiod.istio-system.svc:15010", "istiod's plaintext xDS address")
	service := fs.String("service", "", "namespace/hostname of the service")
	version := fs.String("istio-version", "", "the Istio release the client says it is, as ztunnel does")
	_ = fs.Parse(args)
	if !strings.Contains(*service, "/") {
		return fmt.Errorf("-service must be namespace/hostname")
	}
	ns, host, _ := strings.Cut(*service, "/")
	received := newReceived(*service)
	var env cleanups // the image has no /tmp: harness.ProcessEnv would need one
	defer env.run()
	out := json.NewEncoder(os.Stdout)
	var last *harness.WDSView
	// Like ztunnel, reconnect when the stream cannot start or breaks: right
	// after istiod is replaced, its Service may still lead nowhere.
	for {
		c, err := harness.StartWDSClientAs(&env, *xds, *version, received.note)
		for err == nil {
			if err = c.Err(); err != nil {
				break
			}
			v := c.View(ns, host)
			if last == nil || !reflect.DeepEqual(*last, v) || !received.empty() {
				last = &v
				v.Received = received.take()
				if err := out.Encode(v); err != nil {
					return err
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		fmt.Fprintf(os.Stderr, "e2e-echo wds: %v; reconnecting\n", err)
		if c != nil {
			c.Close()
		}
		time.Sleep(time.Second)
	}
}

// received collects the names of the service's resources as the WDS stream
// applies them: the service itself, workloads that serve it, and removals
// of either.
type received struct {
	key   string
	mu    sync.Mutex
	ours  map[string]bool // workload UIDs seen serving the service
	names []string
}

func newReceived(key string) *received { return &received{key: key, ours: map[string]bool{}} }

func (r *received) note(name string, a *workloadapi.Address) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case a == nil && (name == r.key || r.ours[name]):
		r.names = append(r.names, "-"+name)
	case a != nil && name == r.key:
		r.names = append(r.names, name)
	case a != nil && a.GetWorkload() != nil:
		if _, ok := a.GetWorkload().Services[r.key]; ok {
			r.ours[name] = true
			r.names = append(r.names, name)
		}
	}
}

func (r *received) empty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.names) == 0
}

func (r *received) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := r.names
	r.names = nil
	return names
}

// cleanups is the harness.Env of a one-shot command.
type cleanups []func()

func (c *cleanups) Cleanup(f func())    { *c = append(*c, f) }
func (c *cleanups) Logf(string, ...any) {}
func (c *cleanups) TempDir() string     { return os.TempDir() }
func (c *cleanups) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
}
