package consul

// client.go owns how the registry talks to Consul: the HTTP client (TLS,
// connection cap, the ACL token on every request), read options, and the
// slots that bound concurrent reads.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// consulClient is the Consul API client with the registry's read options.
type consulClient struct {
	*api.Client
	transport *transport
	base      api.QueryOptions
	// slots bound reads besides the two watches (MaxConcurrentRequests):
	// service reads and the pinpoint read share them.
	slots chan struct{}
}

// newClient builds the Consul API client. Connections are capped at
// MaxConcurrentRequests + 2 (the two blocking watches; the occasional
// pinpoint read waits for a free slot), so the registry stays far below
// Consul's http_max_conns_per_client (200) however large the catalog.
func newClient(a Args) (*consulClient, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.ServerURL
	cfg.Datacenter = a.Datacenter
	cfg.Token = "" // set per request by transport, so a rotated token file is honoured
	cfg.TokenFile = ""
	tlsCfg, err := api.SetupTLSConfig(&api.TLSConfig{
		Address:            a.Auth.TLSServerName,
		CAFile:             a.Auth.CAFile,
		CertFile:           a.Auth.CertFile,
		KeyFile:            a.Auth.KeyFile,
		InsecureSkipVerify: a.Auth.TLSSkipVerify,
	})
	if err != nil {
		return nil, fmt.Errorf("consul TLS settings: %w", err)
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
	t := &transport{base: base, token: newTokenSource(string(a.Auth.Token), a.Auth.TokenFile)}
	cfg.HttpClient = &http.Client{Transport: t}
	cfg.Scheme = "" // taken from Address
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", a.ServerURL, err)
	}
	q := api.QueryOptions{Namespace: a.EnterpriseNamespace, Partition: a.Partition}
	switch a.Consistency {
	case "stale":
		q.AllowStale = true
	case "consistent":
		q.RequireConsistent = true
	}
	return &consulClient{Client: client, transport: t, base: q, slots: make(chan struct{}, a.MaxConcurrentRequests)}, nil
}

// query returns the read options every request carries.
func (r *consulClient) query(ctx context.Context) *api.QueryOptions {
	q := r.base
	return q.WithContext(ctx)
}

// slot waits for a free read slot and returns its release.
func (r *consulClient) slot() (release func()) {
	r.slots <- struct{}{}
	return func() { <-r.slots }
}

// readService reads every registration of one service with its checks.
func (r *consulClient) readService(ctx context.Context, name string) ([]*api.ServiceEntry, uint64, error) {
	defer r.slot()()
	entries, meta, err := r.Health().Service(name, "", false, r.query(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("read service %q: %w", name, err)
	}
	if err := aclFiltered(meta, len(entries), "service \""+name+"\" and node_prefix"); err != nil {
		return nil, 0, fmt.Errorf("read service %q: %w", name, err)
	}
	return entries, meta.LastIndex, nil
}

// closeIdle drops idle keep-alive connections: they hold goroutines, and a
// stopped registry leaves none.
func (r *consulClient) closeIdle() {
	if t, ok := r.transport.base.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// transport adds the ACL token to each request and counts requests
// (pilot_consul_requests_total), so operators see how hard istiod drives Consul.
type transport struct {
	base  http.RoundTripper
	token *tokenSource
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if tok, err := t.token.get(); err != nil {
		return nil, err
	} else if tok != "" {
		req = req.Clone(req.Context())
		req.Header.Set("X-Consul-Token", tok)
	}
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
