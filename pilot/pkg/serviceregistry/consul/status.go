package consul

// status.go owns what the registry reports about itself: whether Consul is
// reachable, the last error and success (logged loudly but not spammed,
// exported as metrics and in /debug/consulz), and whether the first sync
// is complete.

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"istio.io/istio/pkg/cluster"
)

// warnEvery is how often an ongoing Consul outage is logged at warn level.
const warnEvery = 30 * time.Second

type status struct {
	cluster     cluster.ID
	server      string // Consul's URL, for messages; never holds the token
	reachable   atomic.Bool
	lastErr     atomic.Pointer[error]
	lastWarn    atomic.Int64 // unix nanoseconds of the last outage warning
	lastSuccess atomic.Int64 // unix nanoseconds of the last successful read
}

// readFailed records a failed read. first says it is the first failure of
// its reader's streak: that one is always a warning, later ones are warnings
// at most every warnEvery (debug otherwise), so an outage is loud but not spam.
func (s *status) readFailed(what string, err error, retry time.Duration, first bool) {
	err = fmt.Errorf("consul %s read from %s: %w", what, s.server, err)
	s.lastErr.Store(&err)
	consulWatchErrors.With(watchLabel.Value(what)).Increment()
	if s.reachable.Swap(false) || s.lastSuccess.Load() == 0 {
		consulReachable.Record(0)
	}
	if now := time.Now(); first || now.UnixNano()-s.lastWarn.Load() >= int64(warnEvery) {
		s.lastWarn.Store(now.UnixNano())
		log.Warnf("%v; keeping the last good state, will retry in %v", err, retry.Round(time.Millisecond))
	} else {
		log.Debugf("%v; will retry in %v", err, retry.Round(time.Millisecond))
	}
}

func (s *status) readSucceeded() {
	if s.lastErr.Swap(nil) != nil {
		log.Infof("consul registry %s: reads from %s succeed again", s.cluster, s.server)
	}
	now := time.Now()
	s.lastSuccess.Store(now.UnixNano())
	consulLastSync.Record(float64(now.Unix()))
	if !s.reachable.Swap(true) {
		consulReachable.Record(1)
	}
}

// err is the error of the latest failed read, nil after a successful one.
func (s *status) err() error {
	if e := s.lastErr.Load(); e != nil {
		return *e
	}
	return nil
}

// syncTracker follows the first sync: every service of the first listing read.
type syncTracker struct {
	mu      sync.Mutex
	started time.Time
	initial map[string]struct{} // services of the first listing still to read; nil before it
	done    chan struct{}       // closed once synced (or timed out)
	synced  atomic.Bool
}

func newSyncTracker() *syncTracker { return &syncTracker{done: make(chan struct{})} }

// expect starts tracking the first listing's services.
func (t *syncTracker) expect(names []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.synced.Load() || t.initial != nil {
		return
	}
	t.initial = make(map[string]struct{}, len(names))
	for _, n := range names {
		t.initial[n] = struct{}{}
	}
	t.checkLocked()
}

// read records that a service was read (or left).
func (t *syncTracker) read(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.initial != nil {
		delete(t.initial, name)
		t.checkLocked()
	}
}

func (t *syncTracker) checkLocked() {
	if len(t.initial) == 0 && !t.synced.Load() {
		t.finishLocked()
	}
}

func (t *syncTracker) finishLocked() {
	t.synced.Store(true)
	close(t.done)
}

// timeout ends the wait with services still unread; it returns how many.
func (t *syncTracker) timeout() (missing int, ended bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.synced.Load() {
		return 0, false
	}
	t.finishLocked()
	return len(t.initial), true
}
