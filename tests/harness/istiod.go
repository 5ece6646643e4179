package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Istiod is the patched pilot-discovery from `make build`, running with
// --registries=Kubernetes,Consul against a Kube and a Consul.
type Istiod struct {
	XDSAddr        string // plaintext xDS (gRPC), what proxyless clients dial
	HTTPAddr       string // /ready, /debug/*
	MonitoringAddr string // /metrics
	CtrlzAddr      string // ControlZ introspection (ForceGC)
	Args           []string
	Env            []string      // extra environment for Start, e.g. PILOT_ENABLE_AMBIENT=true
	ReadyTimeout   time.Duration // for Start; 120 s if zero
	KeepUnready    bool          // Start leaves an istiod that is up but not ready running (ErrNotReady)
	proc           *Process
	dir, bin       string
}

// StartIstiod starts istiod; extra args are appended (later flags win).
func StartIstiod(env Env, kube *Kube, consulURL string, extra ...string) (*Istiod, error) {
	i, err := NewIstiod(env, kube, consulURL, extra...)
	if err != nil {
		return nil, err
	}
	if err := i.Start(); err != nil {
		return nil, err
	}
	return i, nil
}

// NewIstiod prepares istiod without starting it (see Start); it is stopped
// at the env's cleanup.
func NewIstiod(env Env, kube *Kube, consulURL string, extra ...string) (*Istiod, error) {
	bin, err := Binary("pilot-discovery")
	if err != nil {
		return nil, err
	}
	// pflag appends repeated list flags, so an explicit --registries in extra
	// replaces ours rather than following it.
	registries := []string{"--registries=Kubernetes,Consul", "--consulServerURL", consulURL}
	for _, a := range extra {
		if strings.HasPrefix(a, "--registries") {
			registries = nil
		}
	}
	i, err := newIstiod(env, kube, bin, "default:info,consul:info", "")
	if err != nil {
		return nil, err
	}
	i.Args = append(append(i.Args, registries...), extra...)
	return i, nil
}

// StartUpstreamIstiod starts the release's istiod as shipped (no patches)
// with the given mesh config (YAML, e.g. configSources for consul-mcp) and
// its Kubernetes registry only.
func StartUpstreamIstiod(env Env, kube *Kube, meshConfig string, extra ...string) (*Istiod, error) {
	i, err := NewUpstreamIstiod(env, kube, meshConfig, extra...)
	if err != nil {
		return nil, err
	}
	if err := i.Start(); err != nil {
		return nil, err
	}
	return i, nil
}

// NewUpstreamIstiod prepares StartUpstreamIstiod's istiod without starting it.
func NewUpstreamIstiod(env Env, kube *Kube, meshConfig string, extra ...string) (*Istiod, error) {
	bin, err := Binary("upstream-pilot-discovery")
	if err != nil {
		return nil, err
	}
	i, err := newIstiod(env, kube, bin, "default:info,adsc:warn", meshConfig)
	if err != nil {
		return nil, err
	}
	i.Args = append(append(i.Args, "--registries=Kubernetes"), extra...)
	return i, nil
}

// newIstiod lays out an istiod's ports and files; meshConfig "" is none
// (Istio's defaults).
func newIstiod(env Env, kube *Kube, bin, logLevels, meshConfig string) (*Istiod, error) {
	ports, err := FreePorts(6)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	dir := env.TempDir()
	meshFile := filepath.Join(dir, "no-mesh-config")
	if meshConfig != "" {
		meshFile = filepath.Join(dir, "mesh.yaml")
		if err := os.WriteFile(meshFile, []byte(meshConfig), 0o644); err != nil {
			return nil, fmt.Errorf("istiod mesh config: %w", err)
		}
	}
	i := &Istiod{XDSAddr: addr(0), HTTPAddr: addr(1), MonitoringAddr: addr(2), CtrlzAddr: addr(5), dir: dir, bin: bin}
	i.Args = []string{"discovery", "--kubeconfig", kube.Kubeconfig,
		"--grpcAddr", i.XDSAddr, "--httpAddr", i.HTTPAddr, "--monitoringAddr", i.MonitoringAddr,
		"--secureGRPCAddr", addr(3), "--httpsAddr", addr(4), "--ctrlz_port", strconv.Itoa(ports[5]),
		"--meshConfig", meshFile, "--networksConfig", filepath.Join(dir, "no-networks"),
		"--domain", "cluster.local", "--log_output_level", logLevels}
	env.Cleanup(i.Stop)
	return i, nil
}

// Start (re)starts istiod and waits for /ready.
func (i *Istiod) Start() error {
	p, err := Start(i.dir, "istiod", i.bin, i.Args, append([]string{
		"POD_NAMESPACE=istio-system", "POD_NAME=istiod-local", "REVISION=default",
		// No injector or webhooks here: there is no kubelet and no pod.
		"INJECTION_WEBHOOK_CONFIG_NAME=", "VALIDATION_WEBHOOK_CONFIG_NAME=",
	}, i.Env...))
	if err != nil {
		return err
	}
	i.proc = p
	timeout := i.ReadyTimeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	if err := p.WaitReady(timeout, httpOK("http://"+i.HTTPAddr+"/ready", nil)); err != nil {
		if i.KeepUnready && !p.Exited() {
			return fmt.Errorf("istiod: %w: %w", ErrNotReady, err)
		}
		p.Stop()
		return fmt.Errorf("istiod: %w", err)
	}
	return nil
}

// ErrNotReady: istiod runs but did not report ready in time (KeepUnready).
var ErrNotReady = errors.New("running but not ready")

// Stop stops istiod.
func (i *Istiod) Stop() {
	if i.proc != nil {
		i.proc.Stop()
	}
}

// Exited reports whether istiod has ended (crashed, if nobody stopped it).
func (i *Istiod) Exited() bool { return i.proc.Exited() }

// Log returns istiod's output.
func (i *Istiod) Log() string { return i.proc.Log() }

// Tail returns the last n lines of istiod's log.
func (i *Istiod) Tail(n int) string { return i.proc.Tail(n) }

// PID of the running istiod.
func (i *Istiod) PID() int { return i.proc.PID() }

// Debug GETs an istiod debug path, e.g. /debug/registryz.
func (i *Istiod) Debug(path string) ([]byte, error) {
	return get("http://"+i.HTTPAddr+path, 10*time.Second)
}

// DebugTimeout is Debug for slow paths (a CPU profile).
func (i *Istiod) DebugTimeout(path string, timeout time.Duration) ([]byte, error) {
	return get("http://"+i.HTTPAddr+path, timeout)
}

// ServiceAddress is the address /debug/registryz gives a hostname ("" if
// istiod has no such service).
func (i *Istiod) ServiceAddress(host string) (string, error) {
	b, err := i.Debug("/debug/registryz")
	if err != nil {
		return "", err
	}
	var svcs []struct {
		Hostname       string `json:"hostname"`
		DefaultAddress string `json:"defaultAddress"`
	}
	if err := json.Unmarshal(b, &svcs); err != nil {
		return "", fmt.Errorf("istiod /debug/registryz: %w", err)
	}
	for _, s := range svcs {
		if s.Hostname == host {
			return s.DefaultAddress, nil
		}
	}
	return "", nil
}

// Metrics returns istiod's Prometheus metrics text.
func (i *Istiod) Metrics() ([]byte, error) {
	return get("http://"+i.MonitoringAddr+"/metrics", 10*time.Second)
}

// Goroutines reads istiod's go_goroutines metric.
func (i *Istiod) Goroutines() (int, error) {
	m, err := i.Metrics()
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(m), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("istiod metrics: no go_goroutines")
}

// ForceGC runs a garbage collection in istiod (ControlZ), so heap readings
// taken right after compare live memory, not garbage awaiting collection.
func (i *Istiod) ForceGC() error {
	req, err := http.NewRequest(http.MethodPut, "http://"+i.CtrlzAddr+"/memj/forcecollection", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("istiod force GC: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("istiod force GC: HTTP %d", resp.StatusCode)
	}
	return nil
}

func get(url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return b, err
}
