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
	cluster cluster.ID
	server  string // Consul's URL, for messages; never holds the token
	// mu keeps reachable, lastErr and lastSuccess one consistent record:
	// reads of several readers finish in any order.
	mu          sync.Mutex
	reachable   bool
	lastErr     error
	lastWarn    time.Time
	lastSuccess time.Time
}

// statusView is one consistent reading of status.
type statusView struct {
	reachable   bool
	lastErr     error
	lastSuccess time.Time
}

// readFailed records a failed read. first says it is the first failure of
// its reader's streak: that one is always a warning, later ones are warnings
// at most every warnEvery (debug otherwise), so an outage is loud but not spam.
func (s *status) readFailed(what string, err error, retry time.Duration, first bool) {
	err = fmt.Errorf("consul %s read from %s: %w", what, s.server, err)
	consulWatchErrors.With(watchLabel.Value(what)).Increment()
	now := time.Now()
	s.mu.Lock()
	s.lastErr = err
	if s.reachable || s.lastSuccess.IsZero() {
		consulReachable.Record(0)
	}
	s.reachable = false
	warn := first || now.Sub(s.lastWarn) >= warnEvery
	if warn {
		s.lastWarn = now
	}
	s.mu.Unlock()
	if warn {
		log.Warnf("%v; keeping the last good state, will retry in %v", err, retry.Round(time.Millisecond))
	} else {
		log.Debugf("%v; will retry in %v", err, retry.Round(time.Millisecond))
	}
}

func (s *status) readSucceeded() {
	now := time.Now()
	s.mu.Lock()
	recovered := s.lastErr != nil
	s.lastErr, s.lastSuccess = nil, now
	if !s.reachable {
		consulReachable.Record(1)
	}
	s.reachable = true
	s.mu.Unlock()
	consulLastSync.Record(float64(now.Unix()))
	if recovered {
		log.Infof("consul registry %s: reads from %s succeed again", s.cluster, s.server)
	}
}

// view reads the record.
func (s *status) view() statusView {
	s.mu.Lock()
	defer s.mu.Unlock()
	return statusView{reachable: s.reachable, lastErr: s.lastErr, lastSuccess: s.lastSuccess}
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
