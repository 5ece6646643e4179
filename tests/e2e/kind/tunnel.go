package kind

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
)

// portForward opens a tunnel from a loopback port to a pod's port (what
// kubectl port-forward does) and returns the local host:port.
func portForward(cfg *rest.Config, ns, pod string, port int) (string, func(), error) {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return "", nil, err
	}
	u.Path = fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/portforward", ns, pod)
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return "", nil, err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, os.Stderr)
	if err != nil {
		return "", nil, err
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-failed:
		return "", nil, fmt.Errorf("port-forward %s/%s:%d: %w", ns, pod, port, err)
	case <-time.After(30 * time.Second):
		close(stop)
		return "", nil, fmt.Errorf("port-forward %s/%s:%d: not ready after 30s", ns, pod, port)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		close(stop)
		return "", nil, fmt.Errorf("port-forward %s/%s:%d: no local port: %v", ns, pod, port, err)
	}
	var once sync.Once
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), func() { once.Do(func() { close(stop) }) }, nil
}

// execStream is a command running in a pod's container (kubectl exec):
// its stdin, and its stdout as lines.
type execStream struct {
	in     io.WriteCloser
	lines  chan string // closed when stdout ends
	cancel context.CancelFunc
	done   chan struct{}
	stderr syncBuffer
}

// syncBuffer collects an exec stream's stderr while others read it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startExec(cfg *rest.Config, client kubernetes.Interface, ns, pod, container string, command ...string) (*execStream, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command,
			Stdin: true, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	spdyExec, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, req.URL())
	if err != nil {
		return nil, err
	}
	exec := spdyExec
	if ws, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, req.URL().String()); err == nil {
		if exec, err = remotecommand.NewFallbackExecutor(ws, spdyExec, httpstream.IsUpgradeFailure); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &execStream{in: inW, lines: make(chan string), cancel: cancel, done: make(chan struct{})}
	go func() {
		err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: inR, Stdout: outW, Stderr: &s.stderr})
		outW.CloseWithError(fmt.Errorf("exec ended: %v", err))
		close(s.done)
	}()
	go func() {
		defer close(s.lines)
		sc := bufio.NewScanner(outR)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	return s, nil
}

// ended reports whether the command is over.
func (s *execStream) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Close ends the command.
func (s *execStream) Close() {
	_ = s.in.Close()
	s.cancel()
}

// execSession runs `e2e-echo client` in the client pod and sends it one
// request line per call to its target: the call is made by the pod's own
// proxyless gRPC stack, as an application's would be.
type execSession struct {
	*execStream
	target string
	mu     sync.Mutex
}

func startExecSession(cfg *rest.Config, client kubernetes.Interface, ns, pod, container, target string) (*execSession, error) {
	s, err := startExec(cfg, client, ns, pod, container, "/e2e-echo", "client")
	if err != nil {
		return nil, err
	}
	return &execSession{execStream: s, target: target}, nil
}

// call makes one call to the session's target (host:port).
func (c *execSession) call(timeout time.Duration) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	target := c.target
	if _, err := fmt.Fprintf(c.in, "%s %s\n", timeout, target); err != nil {
		return "", fmt.Errorf("exec client: %w (stderr: %s)", err, c.stderr.String())
	}
	select {
	case line, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("exec client ended (stderr: %s)", c.stderr.String())
		}
		if who, ok := strings.CutPrefix(line, "ok "); ok {
			return who, nil
		}
		return "", fmt.Errorf("call %s: %s", target, strings.TrimPrefix(line, "err "))
	case <-time.After(timeout + 30*time.Second):
		// The stream is stuck; later answers would be out of step.
		c.Close()
		return "", fmt.Errorf("exec client: no answer within %v", timeout+30*time.Second)
	}
}
