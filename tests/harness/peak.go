package harness

import "sync/atomic"

// Peak counts things that come and go (open connections, requests in
// flight) and remembers the most there ever were at once.
type Peak struct{ cur, max atomic.Int64 }

// Up counts one more.
func (p *Peak) Up() {
	n := p.cur.Add(1)
	for m := p.max.Load(); n > m && !p.max.CompareAndSwap(m, n); m = p.max.Load() {
	}
}

// Down counts one fewer.
func (p *Peak) Down() { p.cur.Add(-1) }

// Max is the most there ever were at once.
func (p *Peak) Max() int64 { return p.max.Load() }
