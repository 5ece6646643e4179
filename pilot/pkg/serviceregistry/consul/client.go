package consul

// client.go owns how the registry talks to Consul: the HTTP client (TLS,
// keepalives, the ACL token and max_stale on every request), the one path
// every read takes (the gate, a deadline, a check of the answer's
// freshness), and what a failure means for the gate.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"istio.io/istio/pkg/monitoring"
)

// consulClient is the Consul API client with the registry's read options.
type consulClient struct {
	*api.Client
	transport *transport
	base      api.QueryOptions
	gate      *gate
	// timeout bounds a request that does not block; wait is the blocking
	// query wait (a blocking request gets both, plus Consul's jitter).
	timeout, wait time.Duration
	maxStale      time.Duration // 0 with other consistency modes
}

// newClient builds the Consul API client. Connections are capped at
// MaxConnections, below Consul's http_max_conns_per_client (200) however
// large the catalog: over HTTPS, HTTP/2 carries many requests on one
// connection (the per-service watches need that at scale, servicewatch.go);
// over plain HTTP, Consul speaks HTTP/1.1 only, a request per connection.
func newClient(a Args, m *registryMetrics) (*consulClient, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.ServerURL
	cfg.Datacenter = a.Datacenter
	cfg.Token = "" // set per request by transport, so a rotated token file is honoured
	cfg.TokenFile = ""
	material, err := newTLSFiles(a.Auth)
	if err != nil {
		return nil, err
	}
	maxConns := a.MaxConnections
	dial := (&net.Dialer{
		Timeout: 10 * time.Second,
		// A peer that vanished without a reset (a lost node, a NAT or
		// load balancer that dropped the connection) is found within
		// 30 s of silence, not the kernel's 2 h + 9 probes.
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3},
	}).DialContext
	base := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: dial,
		// Every new HTTPS connection takes the TLS files as they are now
		// (tlsfiles.go): rotated certificates need no restart.
		DialTLSContext: material.dialTLS(dial, 10*time.Second),
		// Through an HTTP proxy (CONNECT), net/http does the TLS itself:
		// the material as loaded at start.
		TLSClientConfig:     material.cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		// With a dialer of its own, net/http speaks HTTP/2 only when asked
		// (and the dialer offers h2 in ALPN, tlsfiles.go).
		ForceAttemptHTTP2: true,
		// An HTTP/2 connection that stops answering pings is closed, with
		// every watch on it: a wedged server or proxy is found in 20 s,
		// not at the end of each watch's wait.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
	}
	var maxStale time.Duration
	q := api.QueryOptions{Namespace: a.EnterpriseNamespace, Partition: a.Partition}
	switch a.Consistency {
	case "stale":
		q.AllowStale, maxStale = true, a.MaxStale
	case "consistent":
		q.RequireConsistent = true
	}
	g := newGate(a.MaxConcurrentRequests)
	t := &transport{base: base, token: newTokenSource(string(a.Auth.Token), a.Auth.TokenFile), maxStale: maxStale,
		requests: m.requests, gate: g,
		explainTLS: func(ctx context.Context, addr string) error { return material.explain(ctx, dial, addr) }}
	cfg.HttpClient = &http.Client{Transport: t}
	cfg.Scheme = "" // taken from Address
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", a.ServerURL, err)
	}
	return &consulClient{Client: client, transport: t, base: q, gate: g,
		timeout: a.RequestTimeout, wait: a.WaitTime, maxStale: maxStale}, nil
}

// watches is the number of blocking queries the registry holds open: the
// catalog, the nodes and one per watched check status.
const watches = 2 + len(watchedStates)

// request says how one read is sent.
type request struct {
	// index makes the read a blocking query that answers once Consul's
	// index passes it (or after the wait time); 0 answers at once.
	index uint64
	// leader asks the leader (no stale read): for an answer that must not
	// be older than something already seen.
	leader bool
	// slot takes one of the gate's MaxConcurrentRequests slots; the
	// blocking watches and hedges do not.
	slot bool
	// timeout, if set, replaces the client's request timeout (a large read).
	timeout time.Duration
	// wait, if set, replaces the client's blocking-query wait.
	wait time.Duration
}

// get sends one read: through the gate, with a deadline, and checks the
// answer is fresh enough. call makes the request with the options given.
func (r *consulClient) get(ctx context.Context, req request, call func(*api.QueryOptions) (*api.QueryMeta, error)) (*api.QueryMeta, error) {
	release, err := r.gate.enter(ctx, req.slot)
	if err != nil {
		return nil, err
	}
	q := r.base
	timeout := r.timeout
	if req.timeout > 0 {
		timeout = req.timeout
	}
	if req.index > 0 {
		wait := r.wait
		if req.wait > 0 {
			wait = req.wait
		}
		// Consul holds a blocking query up to wait + wait/16 (its jitter).
		q.WaitIndex, q.WaitTime = req.index, wait
		timeout += wait + wait/16
	}
	if req.leader {
		q.AllowStale = false
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	failing := r.gate.whileFailing()
	if failing != nil && req.index == 0 {
		defer context.AfterFunc(failing, cancel)()
	}
	start := time.Now()
	meta, err := call(q.WithContext(rctx))
	timedOut := rctx.Err() != nil && ctx.Err() == nil
	if failing != nil && failing.Err() != nil && timedOut && err != nil {
		// Sent while Consul failed, cut when it answered again: sent again
		// at once, through the open gate.
		release(abandoned)
		return nil, fmt.Errorf("%w: %w", errCutOnRecovery, err)
	}
	switch {
	case err != nil || meta == nil:
	case meta.LastIndex == 0:
		// Consul always sends an index (at least 1): a proxy in between
		// dropped it. Without it no read can be ordered against another,
		// nor a blocking query block.
		err = errNoIndex
	case q.AllowStale && r.maxStale > 0 && meta.LastContact > r.maxStale:
		// Consul hands such a read to the leader itself (max_stale); an
		// answer this old came from something that did not.
		err = fmt.Errorf("%w: its server had not heard from the leader for %v (max %v)", errStale, meta.LastContact, r.maxStale)
	}
	switch {
	case err == nil:
		release(answered)
	case ctx.Err() != nil:
		release(abandoned)
	case statusCode(err) == http.StatusRequestTimeout:
		// A proxy in front of Consul gave up on this request (an L7 load
		// balancer's timeout): it answered, so the path to Consul is up.
		release(slow)
		err = &refusedError{fmt.Errorf("a proxy in front of Consul timed the read out (a slow read): %w", err), true}
	case timedOut && (r.gate.answeredSince(start) || r.alive(ctx)):
		// Consul answered other requests meanwhile, or answers a ping now:
		// this read is slow (a large answer, a remote datacenter), Consul
		// is not down. Only it is retried, on its own back-off; the gate
		// stays open and Consul reachable.
		release(slow)
		err = &refusedError{fmt.Errorf("no answer within %v while Consul answers (a slow read): %w", timeout, err), true}
	case timedOut:
		release(unavailable)
		err = fmt.Errorf("no answer within %v: %w", timeout, err)
	case consulFailed(err):
		release(unavailable)
	default:
		// Consul (or something in front of it) refused this request alone:
		// 400, 404, 405... It is retried on its own back-off, never at once.
		release(answered)
		err = &refusedError{err: err}
	}
	return meta, err
}

// alive asks Consul whether it answers and has a leader (its leader's
// address, a few bytes), to tell a slow read from an outage when no other
// request was answered while it waited. A server or agent without a leader
// answers "": reads then fail or hang until it has one, which is an outage.
func (r *consulClient) alive(ctx context.Context) bool {
	pctx, cancel := context.WithTimeout(ctx, min(r.timeout, 2*time.Second))
	defer cancel()
	q := r.base
	leader, err := r.Status().LeaderWithQueryOptions(q.WithContext(pctx))
	return err == nil && leader != ""
}

// statusCode is the HTTP status of a Consul error answer, 0 for any other error.
func statusCode(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

var (
	// errCutOnRecovery: a read sent while Consul failed, cut once it
	// answered again, to be sent again at once.
	errCutOnRecovery = errors.New("sent while Consul failed, cut once it answered again")
	// errStale: an answer older than the registry may accept.
	errStale = errors.New("stale answer")
	// errNoIndex: an answer without X-Consul-Index.
	errNoIndex = errors.New("answer without X-Consul-Index (does a proxy between istiod and Consul drop it?)")
)

// consulFailed says whether err means Consul itself is failing (so every
// reader should back off), rather than refusing one request.
func consulFailed(err error) bool {
	if code := statusCode(err); code != 0 {
		// 429: request_limits; 5xx: no leader, overload; 401/403: the token
		// is not accepted, which fails every request alike.
		return code == http.StatusTooManyRequests || code >= 500 || code == http.StatusUnauthorized ||
			code == http.StatusForbidden
	}
	// Anything that is not an answer: refused, reset, TLS, a token file gone, stale.
	return true
}

// readService reads every registration of one service with its checks.
func (r *consulClient) readService(ctx context.Context, name string, leader bool) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return r.readServiceWith(ctx, name, request{slot: true, leader: leader})
}

// readServiceWith is readService sent as req says (a service's watch blocks).
func (r *consulClient) readServiceWith(ctx context.Context, name string, req request) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	var answer []serviceAnswer
	meta, err := r.get(ctx, req, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		return r.Raw().Query("/v1/health/service/"+name, &answer, q)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read service %q: %w", name, err)
	}
	return entriesOf(answer), meta, nil
}

// serviceAnswer is what the registry uses of one entry of
// /v1/health/service/<name> (convert.go, health.go). Decoding only that
// skips what Consul's client would allocate for every instance and check
// and the registry never reads: tagged addresses, proxy and connect
// blocks, check definitions, outputs and tags: a large share of what the
// initial sync allocated.
type serviceAnswer struct {
	Node *struct {
		Node, Address, Datacenter string
		Meta                      map[string]string
	}
	Service *struct {
		ID, Address string
		Kind        api.ServiceKind
		Port        int
		Tags        []string
		Meta        map[string]string
		Weights     api.AgentWeights
	}
	Checks []struct{ Node, CheckID, Status string }
}

// entriesOf turns an answer into Consul's client types, those fields only;
// one allocation per kind of struct for the whole answer.
func entriesOf(answer []serviceAnswer) []*api.ServiceEntry {
	n := 0
	for _, a := range answer {
		n += len(a.Checks)
	}
	entries := make([]api.ServiceEntry, len(answer))
	nodes := make([]api.Node, len(answer))
	services := make([]api.AgentService, len(answer))
	checks := make([]api.HealthCheck, 0, n)
	checkPtrs := make([]*api.HealthCheck, 0, n)
	out := make([]*api.ServiceEntry, len(answer))
	for i, a := range answer {
		e := &entries[i]
		if a.Node != nil {
			nodes[i] = api.Node{Node: a.Node.Node, Address: a.Node.Address, Datacenter: a.Node.Datacenter, Meta: a.Node.Meta}
			e.Node = &nodes[i]
		}
		if s := a.Service; s != nil {
			services[i] = api.AgentService{ID: s.ID, Address: s.Address, Kind: s.Kind, Port: s.Port, Tags: s.Tags,
				Meta: s.Meta, Weights: s.Weights}
			e.Service = &services[i]
		}
		first := len(checkPtrs)
		for _, c := range a.Checks {
			checks = append(checks, api.HealthCheck{Node: c.Node, CheckID: c.CheckID, Status: c.Status})
			checkPtrs = append(checkPtrs, &checks[len(checks)-1])
		}
		if len(a.Checks) > 0 {
			e.Checks = checkPtrs[first:len(checkPtrs):len(checkPtrs)]
		}
		out[i] = e
	}
	return out
}

// closeIdle drops idle keep-alive connections: they hold goroutines, and a
// stopped registry leaves none.
func (r *consulClient) closeIdle() {
	if t, ok := r.transport.base.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// transport adds the ACL token and max_stale to each request and counts
// requests (pilot_consul_requests_total), so operators see how hard istiod
// drives Consul.
type transport struct {
	base     http.RoundTripper
	token    *tokenSource
	maxStale time.Duration
	requests monitoring.Metric
	// gate is held for as long as an overloaded answer's Retry-After
	// asks: only the transport sees the answer's headers.
	gate *gate
	// http2 is set once Consul answered over HTTP/2: the per-service
	// watches then share connections (servicewatch.go).
	http2 atomic.Bool
	// explainTLS finds the TLS alert HTTP/2 dropped (tlsfiles.go), at
	// most once per explainEvery (explained: the last time).
	explainTLS func(ctx context.Context, addr string) error
	explained  atomic.Int64
}

// explainEvery bounds the extra connections explaining costs: thousands
// of watches cut together by a server restart are one explanation.
const explainEvery = time.Second

// explain adds to the error of an HTTPS request whose connection was made
// and then lost why the server dropped it, if a TLS alert says so:
// net/http's HTTP/2 client reports that as "client conn could not be
// established" or a broken pipe, and an operator needs "certificate required".
func (t *transport) explain(req *http.Request, err error) error {
	var op *net.OpError
	if req.URL.Scheme != "https" || req.Context().Err() != nil || (errors.As(err, &op) && op.Op == "dial") {
		return err
	}
	now, last := time.Now().UnixNano(), t.explained.Load()
	if now-last < int64(explainEvery) || !t.explained.CompareAndSwap(last, now) {
		return err
	}
	if why := t.explainTLS(req.Context(), req.URL.Host); why != nil {
		return fmt.Errorf("%w (the server's TLS alert: %w)", err, why)
	}
	return err
}

// maxRetryAfter bounds how long a Retry-After may hold every read: a proxy
// asking for an hour must not freeze the registry that long.
const maxRetryAfter = 30 * time.Second

// noteRetryAfter holds the gate for an overloaded answer's Retry-After
// (seconds, or an HTTP date).
func (t *transport) noteRetryAfter(resp *http.Response) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return
	}
	var d time.Duration
	if secs, err := strconv.Atoi(v); err == nil {
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = time.Until(at)
	}
	if d <= 0 {
		return
	}
	t.gate.holdUntil(time.Now().Add(min(d, maxRetryAfter)))
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.token.get()
	if err != nil {
		return nil, err
	}
	q := req.URL.Query()
	staleBound := t.maxStale > 0 && q.Has("stale")
	if tok != "" || staleBound {
		req = req.Clone(req.Context())
		if tok != "" {
			req.Header.Set("X-Consul-Token", tok)
		}
		if staleBound {
			q.Set("max_stale", t.maxStale.String())
			req.URL.RawQuery = q.Encode()
		}
	}
	t.requests.Increment()
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		err = t.explain(req, err)
	}
	if err == nil {
		t.noteRetryAfter(resp)
		if resp.ProtoMajor == 2 {
			t.http2.Store(true)
		}
	}
	return resp, err
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

// configured reports whether a token is set at all (else requests go as
// Consul's anonymous token).
func (s *tokenSource) configured() bool { return s.static != "" || s.file != "" }

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
