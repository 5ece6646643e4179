package harness

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Relay is a TCP relay in front of several backends: each connection goes
// to the next backend in turn (one that refuses is skipped, as a load
// balancer's health check would). One client's connections, and so the
// requests of one watch, reach different servers, whose indexes differ.
type Relay struct {
	URL      string
	backends []string
	next     atomic.Uint64
	ln       net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// StartRelay relays to backends ("host:port") until the env's cleanup.
func StartRelay(env Env, backends []string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{URL: "http://" + ln.Addr().String(), backends: backends, ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Go(r.serve)
	env.Cleanup(r.Close)
	return r, nil
}

func (r *Relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() { r.relay(c) })
	}
}

func (r *Relay) relay(c net.Conn) {
	var b net.Conn
	start := r.next.Add(1)
	for i := range len(r.backends) {
		addr := r.backends[(start+uint64(i))%uint64(len(r.backends))]
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			b = conn
			break
		}
	}
	if b == nil || !r.track(c, b) {
		c.Close()
		if b != nil {
			b.Close()
		}
		return
	}
	defer r.untrack(c, b)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(b, c)
	go pipe(c, b)
	<-done
	<-done
}

func (r *Relay) track(conns ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false // closed
	}
	for _, c := range conns {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *Relay) untrack(conns ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(r.conns, c)
	}
}

// Close stops the relay and ends every connection through it.
func (r *Relay) Close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.conns = nil
	r.mu.Unlock()
	r.wg.Wait()
}
