package harness

import (
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FaultProxy sits in front of a real Consul and injects faults: delays,
// HTTP error statuses, connection resets. It counts requests and the peak
// of concurrently open connections.
type FaultProxy struct {
	URL      string
	mode     atomic.Value // string: "", "delay", "reset", or an HTTP status code
	requests atomic.Int64
	open     atomic.Int64
	peak     atomic.Int64
	srv      *http.Server
	mu       sync.Mutex
	byPath   map[string]int64
}

// StartFaultProxy proxies to backend (an http:// URL) until cleanup.
func StartFaultProxy(env Env, backend string) (*FaultProxy, error) {
	u, err := url.Parse(backend)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &FaultProxy{URL: "http://" + l.Addr().String(), byPath: map[string]int64{}}
	p.mode.Store("")
	rp := httputil.NewSingleHostReverseProxy(u)
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.requests.Add(1)
			p.mu.Lock()
			p.byPath[endpointOf(r.URL.Path)]++
			p.mu.Unlock()
			switch m := p.mode.Load().(string); m {
			case "":
			case "delay":
				select {
				case <-time.After(3 * time.Second):
				case <-r.Context().Done():
					return
				}
			case "reset":
				if hj, ok := w.(http.Hijacker); ok {
					if c, _, err := hj.Hijack(); err == nil {
						if tc, ok := c.(*net.TCPConn); ok {
							_ = tc.SetLinger(0) // RST, not FIN
						}
						c.Close()
						return
					}
				}
			default:
				code, _ := strconv.Atoi(m)
				http.Error(w, "injected fault", code)
				return
			}
			rp.ServeHTTP(w, r)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				n := p.open.Add(1)
				for old := p.peak.Load(); n > old && !p.peak.CompareAndSwap(old, n); old = p.peak.Load() {
				}
			case http.StateClosed, http.StateHijacked:
				p.open.Add(-1)
			}
		},
	}
	go func() { _ = p.srv.Serve(l) }()
	env.Cleanup(func() { _ = p.srv.Close() })
	return p, nil
}

// Set switches the fault: "", "delay", "reset", "429", "500", "503".
func (p *FaultProxy) Set(mode string) { p.mode.Store(mode) }

// Requests seen so far.
func (p *FaultProxy) Requests() int64 { return p.requests.Load() }

// PeakConnections is the most connections ever open at once.
func (p *FaultProxy) PeakConnections() int64 { return p.peak.Load() }

// RequestsByEndpoint counts requests by API endpoint (the path without the
// service name, e.g. /v1/health/service).
func (p *FaultProxy) RequestsByEndpoint() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.byPath)
}

func endpointOf(path string) string {
	parts := strings.SplitN(path, "/", 5) // "", "v1", "health", "service", name
	if len(parts) > 4 {
		parts = parts[:4]
	}
	return strings.Join(parts, "/")
}
