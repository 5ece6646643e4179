package consul

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// newClient builds the Consul API client. Connections are capped at
// MaxConcurrentRequests + 2 (the two blocking watches; the occasional
// pinpoint read waits for a free one), so the registry stays far below Consul's http_max_conns_per_client (200) however large the catalog.
func newClient(a Args) (*api.Client, *transport, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.ServerURL
	cfg.Datacenter = a.Datacenter
	cfg.Token = "" // set per request by transport, so a rotated token file is honoured
	cfg.TokenFile = ""
	tlsCfg, err := api.SetupTLSConfig(&api.TLSConfig{
		Address:            a.TLSServerName,
		CAFile:             a.CAFile,
		CertFile:           a.CertFile,
		KeyFile:            a.KeyFile,
		InsecureSkipVerify: a.TLSSkipVerify,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("consul TLS settings: %w", err)
	}
	maxConns := a.MaxConcurrentRequests + 2
	base := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
	}
	t := &transport{base: base, token: newTokenSource(string(a.Token), a.TokenFile)}
	cfg.HttpClient = &http.Client{Transport: t}
	cfg.Scheme = "" // taken from Address
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client for %s: %w", a.ServerURL, err)
	}
	return client, t, nil
}

// transport adds the ACL token to each request and counts requests, so the
// metrics and tests can see how hard the registry drives Consul.
type transport struct {
	base     http.RoundTripper
	token    *tokenSource
	inflight atomic.Int64
	peak     atomic.Int64
	total    atomic.Int64
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if tok, err := t.token.get(); err != nil {
		return nil, err
	} else if tok != "" {
		req = req.Clone(req.Context())
		req.Header.Set("X-Consul-Token", tok)
	}
	n := t.inflight.Add(1)
	defer t.inflight.Add(-1)
	for p := t.peak.Load(); n > p && !t.peak.CompareAndSwap(p, n); p = t.peak.Load() {
	}
	t.total.Add(1)
	consulRequests.Increment()
	return t.base.RoundTrip(req)
}

// tokenSource returns the ACL token: the token file's content when a file is
// set (re-read when its modification time or size changes), else the static token.
type tokenSource struct {
	static string
	file   string

	mu      sync.Mutex
	cached  string
	modTime time.Time
	size    int64
}

func newTokenSource(static, file string) *tokenSource {
	return &tokenSource{static: static, file: file}
}

func (s *tokenSource) get() (string, error) {
	if s.file == "" {
		return s.static, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := os.Stat(s.file)
	if err != nil {
		// Never include the token itself; the path is not secret.
		return "", fmt.Errorf("read consul token file %s: %w", s.file, err)
	}
	if st.ModTime().Equal(s.modTime) && st.Size() == s.size {
		return s.cached, nil
	}
	data, err := os.ReadFile(s.file)
	if err != nil {
		return "", fmt.Errorf("read consul token file %s: %w", s.file, err)
	}
	if s.cached != "" {
		log.Infof("consul token file %s changed; using the new token", s.file)
	}
	s.cached, s.modTime, s.size = strings.TrimSpace(string(data)), st.ModTime(), st.Size()
	return s.cached, nil
}
