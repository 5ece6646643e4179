package bench

import (
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
)

// Tracker turns what the watchers receive into the two measurements: when
// each watcher first held every service with all its endpoints (initial
// sync), and how long each expected endpoint change took to reach each
// watcher (change-to-client latency).
type Tracker struct {
	mu        sync.Mutex
	watchers  int
	want      map[string]int // cluster -> endpoints at sync
	complete  []map[string]bool
	syncedAt  []time.Time
	synced    chan struct{}
	pending   map[string][]*change // cluster -> changes not yet seen by every watcher
	latencies []time.Duration
	byWatcher [][]time.Duration
	last      []map[string]map[string]bool // watcher -> cluster -> endpoints
}

// change is one endpoint expected to appear (present) or disappear.
type change struct {
	addr    string
	present bool
	start   time.Time
	seen    []bool
	left    int
	done    chan struct{}
	counted bool // false for a warm-up change: no latency, never unseen
}

// NewTracker expects every cluster of data to reach data.M endpoints on each
// of watchers watchers.
func NewTracker(data Dataset, watchers int) *Tracker {
	want := map[string]int{}
	for _, c := range data.Clusters() {
		want[c] = data.M
	}
	return newTracker(want, watchers)
}

// newTracker expects cluster -> endpoint count at sync.
func newTracker(want map[string]int, watchers int) *Tracker {
	t := &Tracker{watchers: watchers, want: want, syncedAt: make([]time.Time, watchers),
		synced: make(chan struct{}), pending: map[string][]*change{}}
	for range watchers {
		t.complete = append(t.complete, map[string]bool{})
		t.last = append(t.last, map[string]map[string]bool{})
	}
	t.byWatcher = make([][]time.Duration, watchers)
	return t
}

// Last is what watcher w last received for every cluster: "ip:port" sets.
func (t *Tracker) Last(w int) map[string]map[string]bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]map[string]bool, len(t.last[w]))
	for c, addrs := range t.last[w] {
		out[c] = addrs
	}
	return out
}

// Synced is closed once every watcher has every service's full endpoint set.
func (t *Tracker) Synced() <-chan struct{} { return t.synced }

// SyncedAt is when each watcher became complete (zero if it never did).
func (t *Tracker) SyncedAt() []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]time.Time(nil), t.syncedAt...)
}

// Expect registers a change about to be written; the returned channel closes
// when every watcher has seen it. Call it before the write, so a fast push
// cannot be missed; the latency therefore includes the write itself.
func (t *Tracker) Expect(cluster, addr string, present bool) <-chan struct{} {
	return t.expect(cluster, addr, present, true, nil)
}

// ExpectUncounted is Expect for a change that is not measured (warm-up),
// waited for by the watchers for which by(w) holds (nil: all).
func (t *Tracker) ExpectUncounted(cluster, addr string, present bool, by func(w int) bool) <-chan struct{} {
	return t.expect(cluster, addr, present, false, by)
}

func (t *Tracker) expect(cluster, addr string, present, counted bool, by func(w int) bool) <-chan struct{} {
	c := &change{addr: addr, present: present, start: time.Now(), seen: make([]bool, t.watchers),
		left: t.watchers, done: make(chan struct{}), counted: counted}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !counted {
		// A warm-up change a watcher already holds (one that never saw
		// the change it undoes) is not waited for, nor are watchers
		// outside by.
		for w := range t.watchers {
			if held, ok := t.last[w][cluster]; ok && held[addr] == present || by != nil && !by(w) {
				c.seen[w] = true
				c.left--
			}
		}
		if c.left == 0 {
			close(c.done)
			return c.done
		}
	}
	t.pending[cluster] = append(t.pending[cluster], c)
	return c.done
}

// Latencies returns every (change, watcher) latency observed so far, and how
// many (change, watcher) pairs are still unseen.
func (t *Tracker) Latencies() (seen []time.Duration, unseen int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, cs := range t.pending {
		for _, c := range cs {
			if c.counted {
				unseen += c.left
			}
		}
	}
	return append([]time.Duration(nil), t.latencies...), unseen
}

// LatenciesOf returns the latencies watchers for which keep(w) holds observed.
func (t *Tracker) LatenciesOf(keep func(w int) bool) []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []time.Duration
	for w, l := range t.byWatcher {
		if keep(w) {
			out = append(out, l...)
		}
	}
	return out
}

// observe records one ClusterLoadAssignment received by watcher w at time at.
func (t *Tracker) observe(w int, cla *endpoint.ClusterLoadAssignment, at time.Time) {
	addrs := map[string]bool{}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			if e.HealthStatus == core.HealthStatus_UNHEALTHY || e.HealthStatus == core.HealthStatus_DRAINING {
				continue
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			addrs[sa.GetAddress()+":"+strconv.FormatUint(uint64(sa.GetPortValue()), 10)] = true
		}
	}
	t.observeAddrs(w, cla.ClusterName, addrs, at)
}

// observeAddrs records that watcher w holds addrs ("ip:port") for cluster
// name at time at.
func (t *Tracker) observeAddrs(w int, name string, addrs map[string]bool, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last[w][name] = addrs
	if want, ok := t.want[name]; ok && t.syncedAt[w].IsZero() {
		t.complete[w][name] = len(addrs) == want
		if !t.complete[w][name] {
			delete(t.complete[w], name)
		}
		if len(t.complete[w]) == len(t.want) {
			t.syncedAt[w] = at
			if t.allSyncedLocked() {
				close(t.synced)
			}
		}
	}
	cs := t.pending[name]
	kept := cs[:0]
	for _, c := range cs {
		if !c.seen[w] && addrs[c.addr] == c.present {
			c.seen[w] = true
			c.left--
			if c.counted {
				t.latencies = append(t.latencies, at.Sub(c.start))
				t.byWatcher[w] = append(t.byWatcher[w], at.Sub(c.start))
			}
		}
		if c.left == 0 {
			close(c.done)
			continue
		}
		kept = append(kept, c)
	}
	if len(kept) == 0 {
		delete(t.pending, name)
	} else {
		t.pending[name] = kept
	}
}

func (t *Tracker) allSyncedLocked() bool {
	for _, s := range t.syncedAt {
		if s.IsZero() {
			return false
		}
	}
	return true
}
