package harness

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// FaultProxy sits in front of a real Consul and injects faults: delays,
// HTTP error statuses, connection resets, requests never answered. It
// counts requests and the peak of concurrently open connections, and can
// see or rewrite each request and each answer.
type FaultProxy struct {
	URL      string
	mode     atomic.Value // string: see Set
	rewrite  atomic.Pointer[func(*http.Request)]
	answer   atomic.Pointer[func(*http.Response)]
	requests atomic.Int64
	bytes    atomic.Int64 // response bodies, as sent (compressed if the client asked)
	conns    Peak
	srv      *http.Server
}

// errInjectedReset resets the connection of an answer a reset fault met.
var errInjectedReset = errors.New("injected reset")

// ProxyTLS makes a FaultProxy speak HTTPS (HTTP/2 where the client
// offers it) with CertFile and KeyFile, and verify its https:// backend
// with CAFile as ServerName.
type ProxyTLS struct {
	CertFile, KeyFile, CAFile, ServerName string
}

// StartFaultProxy proxies to backend (an http:// URL) until cleanup.
func StartFaultProxy(env Env, backend string) (*FaultProxy, error) {
	return startFaultProxy(env, backend, nil)
}

// StartFaultProxyTLS proxies to backend (an https:// URL) over HTTPS, as a
// TLS-terminating load balancer in front of Consul does; requests to the
// backend share HTTP/2 connections. Faults that cut connections need
// HTTP/1.1 (StartFaultProxy).
func StartFaultProxyTLS(env Env, backend string, t ProxyTLS) (*FaultProxy, error) {
	return startFaultProxy(env, backend, &t)
}

func startFaultProxy(env Env, backend string, t *ProxyTLS) (*FaultProxy, error) {
	u, err := url.Parse(backend)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &FaultProxy{URL: "http://" + l.Addr().String()}
	p.mode.Store("")
	rp := httputil.NewSingleHostReverseProxy(u)
	var serve *tls.Config
	if t != nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("fault proxy certificate: %w", err)
		}
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("fault proxy backend CA: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("fault proxy backend CA %s: no certificate", t.CAFile)
		}
		serve = &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		rp.Transport = &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: t.ServerName},
			ForceAttemptHTTP2: true,
			IdleConnTimeout:   90 * time.Second,
		}
		p.URL = "https://" + l.Addr().String()
	}
	// A client that gives up (a blocking query cancelled at shutdown) is
	// not news: every such request would print "proxy error".
	rp.ErrorLog = stdlog.New(io.Discard, "", 0)
	rp.ModifyResponse = func(resp *http.Response) error {
		// A fault set while the request was forwarded (a blocking query
		// Consul holds) meets its answer: a Consul or proxy that starts
		// failing fails what it holds too.
		switch m := p.mode.Load().(string); m {
		case "", "delay":
		case "hang":
			<-resp.Request.Context().Done()
			return resp.Request.Context().Err()
		case "reset", "reset-after-data":
			return errInjectedReset
		default:
			code, _ := strconv.Atoi(m)
			resp.Body.Close()
			resp.StatusCode, resp.Status = code, strconv.Itoa(code)+" injected fault"
			resp.Header = http.Header{"Content-Type": {"text/plain"}}
			resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader("injected fault")), int64(len("injected fault"))
		}
		if f := p.answer.Load(); f != nil {
			(*f)(resp)
		}
		resp.Body = CountBody(resp.Body, &p.bytes)
		return nil
	}
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		if errors.Is(err, errInjectedReset) && resetConn(w) {
			return
		}
		w.WriteHeader(http.StatusBadGateway)
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.requests.Add(1)
			if f := p.rewrite.Load(); f != nil {
				(*f)(r)
			}
			switch m := p.mode.Load().(string); m {
			case "":
			case "delay":
				select {
				case <-time.After(3 * time.Second):
				case <-r.Context().Done():
					return
				}
			case "reset":
				if resetConn(w) {
					return
				}
			case "hang":
				// Accepted and never answered, as through a connection a NAT
				// or load balancer dropped without a reset: only the client
				// giving up ends it.
				<-r.Context().Done()
				return
			case "reset-after-data":
				if hj, ok := w.(http.Hijacker); ok {
					if c, buf, err := hj.Hijack(); err == nil {
						_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n" +
							"X-Consul-Index: 1\r\n\r\n[{\"Node\":")
						_ = buf.Flush()
						if tc, ok := c.(*net.TCPConn); ok {
							_ = tc.SetLinger(0)
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
			// Answers reach Answer hooks as plain JSON: no gzip from Consul.
			r.Header.Del("Accept-Encoding")
			rp.ServeHTTP(w, r)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				p.conns.Up()
			case http.StateClosed, http.StateHijacked:
				p.conns.Down()
			}
		},
	}
	if serve != nil {
		p.srv.TLSConfig = serve
		go func() { _ = p.srv.ServeTLS(l, "", "") }()
	} else {
		go func() { _ = p.srv.Serve(l) }()
	}
	env.Cleanup(func() { _ = p.srv.Close() })
	return p, nil
}

// Set switches the fault for requests that arrive from now on, and for
// the answers of those forwarded before that have not been passed on yet
// (all but "delay"): "" (none),
// "delay" (3 s), "reset" (RST before any answer), "reset-after-data" (the
// start of an answer, then RST), "hang" (never answered), or an HTTP
// status code ("429", "503").
func (p *FaultProxy) Set(mode string) { p.mode.Store(mode) }

// Answer calls f with every answer Consul gives before it is passed on: to
// record it, or to change it (headers, body).
func (p *FaultProxy) Answer(f func(*http.Response)) { p.answer.Store(&f) }

// Requests seen so far.
func (p *FaultProxy) Requests() int64 { return p.requests.Load() }

// Bytes is how many bytes of response bodies have been forwarded so far.
func (p *FaultProxy) Bytes() int64 { return p.bytes.Load() }

// CountBody returns body, adding to n what is read through it.
func CountBody(body io.ReadCloser, n *atomic.Int64) io.ReadCloser {
	return &countingBody{ReadCloser: body, n: n}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

// Rewrite calls f with every request before it is forwarded (or faulted):
// to record it, or to change it.
func (p *FaultProxy) Rewrite(f func(*http.Request)) { p.rewrite.Store(&f) }

// PeakConnections is the most connections ever open at once.
func (p *FaultProxy) PeakConnections() int64 { return p.conns.Max() }

// resetConn ends the connection under w with a reset (RST, not FIN), as a
// crashed server's or a dropped NAT entry's; false if w cannot be taken
// over.
func resetConn(w http.ResponseWriter) bool {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return false
	}
	c, _, err := hj.Hijack()
	if err != nil {
		return false
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	return true
}
