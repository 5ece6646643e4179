package consul

// status.go owns what the registry reports about itself: whether Consul is
// reachable, the last error and success (logged loudly but not spammed,
// exported as metrics and in /debug/consulz), panics it recovered from,
// and whether the first sync is complete.

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"istio.io/istio/pkg/cluster"
)

// warnEvery is how often one kind of failure is logged at warn level: an
// outage of 10,000 services is one warning per period, not 10,000.
const warnEvery = 30 * time.Second

type status struct {
	cluster cluster.ID
	server  string // Consul's URL, for messages; never holds the token
	// mu keeps the record consistent: reads of several readers finish in
	// any order.
	mu          sync.Mutex
	reachable   bool
	lastErr     error
	lastSuccess time.Time
	warned      map[string]time.Time // by kind of failure: the last warning
	quiet       map[string]int       // failures since that warning, logged at debug
	panics      int
	lastPanic   string
	// warn writes a warning (tests count them).
	warn    func(string)
	metrics *registryMetrics
}

// statusView is one consistent reading of status.
type statusView struct {
	reachable   bool
	lastErr     error
	lastSuccess time.Time
	panics      int
	lastPanic   string
}

func newStatus(cluster cluster.ID, server string, m *registryMetrics) *status {
	m.reachable.Record(0) // until a read succeeds
	m.lastError.Record(0)
	return &status{cluster: cluster, server: server, warned: map[string]time.Time{}, quiet: map[string]int{},
		warn: func(msg string) { log.Warn(msg) }, metrics: m}
}

// readFailed records a failed read of Consul by reader what (catalog,
// health, nodes, checks, service): Consul is unreachable until a read
// succeeds, unless it refused this read alone (refusedError). The last good
// state is kept.
func (s *status) readFailed(what string, err error, retry time.Duration) {
	err = fmt.Errorf("consul %s read from %s: %w", what, s.server, err)
	s.metrics.watchError(what)
	s.metrics.lastError.Record(float64(time.Now().Unix()))
	s.mu.Lock()
	s.lastErr = err
	// Consul answered, refusing this read alone (or it was slow while
	// others were answered): Consul is reachable.
	if s.reachable && !isRefused(err) {
		s.metrics.reachable.Record(0)
		s.reachable = false
	}
	s.mu.Unlock()
	next := "will retry"
	if retry > 0 {
		next = fmt.Sprintf("will retry in %v", retry.Round(time.Millisecond))
	}
	s.log(what, fmt.Sprintf("%v; keeping the last good state, %s", err, next))
}

// serviceRefused records that Consul refused to show one service (while
// it answers others): its last good state is kept, and it is retried
// slowly; Consul stays reachable.
func (s *status) serviceRefused(name string, err error) {
	s.metrics.watchError("service")
	s.log("refused", fmt.Sprintf("consul registry %s: %v; serving what was read before, if anything, and retrying it slowly",
		s.cluster, err))
}

// log writes a failure at warn level once per warnEvery and kind, with the
// number of failures since the last warning; the others at debug.
func (s *status) log(kind, msg string) {
	now := time.Now()
	s.mu.Lock()
	warn := now.Sub(s.warned[kind]) >= warnEvery
	quiet := s.quiet[kind]
	if warn {
		s.warned[kind], s.quiet[kind] = now, 0
	} else {
		s.quiet[kind]++
	}
	s.mu.Unlock()
	switch {
	case !warn:
		log.Debug(msg)
	case quiet > 0:
		s.warn(fmt.Sprintf("%s (and %d more %s failures in the last %v, logged at debug)", msg, quiet, kind, warnEvery))
	default:
		s.warn(msg)
	}
}

func (s *status) readSucceeded() {
	now := time.Now()
	s.mu.Lock()
	recovered := s.lastErr != nil
	s.lastErr, s.lastSuccess = nil, now
	if !s.reachable {
		s.metrics.reachable.Record(1)
	}
	s.reachable = true
	s.mu.Unlock()
	s.metrics.lastSync.Record(float64(now.Unix()))
	if recovered {
		log.Infof("consul registry %s: reads from %s succeed again", s.cluster, s.server)
	}
}

// panicked records a recovered panic.
func (s *status) panicked(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.panics++
	s.lastPanic = msg
}

// view reads the record.
func (s *status) view() statusView {
	s.mu.Lock()
	defer s.mu.Unlock()
	return statusView{reachable: s.reachable, lastErr: s.lastErr, lastSuccess: s.lastSuccess,
		panics: s.panics, lastPanic: s.lastPanic}
}

// syncTracker follows the first sync: every service of the first listing
// read and pushed to istiod.
type syncTracker struct {
	mu       sync.Mutex
	started  time.Time
	progress time.Time           // the first listing, or a service of it read
	initial  map[string]struct{} // services of the first listing still to read; nil before it
	done     chan struct{}       // closed once synced (or timed out)
	complete chan struct{}       // closed once every service of the first listing is read
	synced   atomic.Bool
	timedOut atomic.Bool // readiness was released by SyncTimeout
}

func newSyncTracker() *syncTracker {
	return &syncTracker{done: make(chan struct{}), complete: make(chan struct{})}
}

// expect starts tracking the first listing's services.
func (t *syncTracker) expect(names []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.initial != nil {
		return
	}
	t.initial = make(map[string]struct{}, len(names))
	for _, n := range names {
		t.initial[n] = struct{}{}
	}
	t.progress = time.Now()
	t.checkLocked()
}

// read records that a service was read and pushed (or left, or was refused).
func (t *syncTracker) read(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.initial[name]; ok {
		delete(t.initial, name)
		t.progress = time.Now()
		t.checkLocked()
	}
}

// lastProgress is when the first sync last moved (its start, if never).
func (t *syncTracker) lastProgress() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.progress.IsZero() {
		return t.started
	}
	return t.progress
}

func (t *syncTracker) checkLocked() {
	if len(t.initial) > 0 {
		return
	}
	select {
	case <-t.complete:
	default:
		close(t.complete)
	}
	if !t.synced.Load() {
		t.finishLocked()
	}
}

func (t *syncTracker) finishLocked() {
	t.synced.Store(true)
	close(t.done)
}

// timeout ends the wait with services still unread; it returns how many
// (-1: the catalog was never listed).
func (t *syncTracker) timeout() (missing int, ended bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.synced.Load() {
		return 0, false
	}
	t.timedOut.Store(true)
	t.finishLocked()
	if t.initial == nil {
		return -1, true
	}
	return len(t.initial), true
}
