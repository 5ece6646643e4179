package consul

// pinpoint.go owns the pinpoint detector. A catalog index that moves means
// an instance was registered, re-registered or deregistered somewhere, and
// the catalog listing cannot say where (one listing may also cover several
// writes). The detector then reads every check once (coalesced, never more
// than one read at a time) and marks each service with a check created or
// modified since its last read, or one that vanished. A catalog change
// counts as explained when a check was created or modified at its index,
// when checks vanished in a range of indexes that holds it, or when a
// service read's own index equals it. Anything else (an instance without
// checks, a re-registration that leaves its checks alone) marks every
// service once: rare, costly at scale, always correct. Health changes alone
// never move the catalog index, so they never cost a pinpoint read.
//
// Its cost follows the catalog (about 4 MB and 90 ms at 10,000 instances,
// 40 MB at 100,000), so a long read is spaced by its own duration: after a
// read whose request took d, the next waits pinpointSpacing×(d − pinpointFree)
// (failures and waits do not count; at most pinpointMaxGap).
// Under registration churn a large catalog's reads then use at most about
// a fifth of the time, the changes made meanwhile placed by the next read;
// a small catalog's reads, which cost little, run as often as needed.
//
// The gap: an instance without checks that joins or leaves in the same
// listing as another change, or inside a range where checks vanished, is
// found only when its service is next read for another reason (docs/architecture.md,
// Known limits).

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	// grace is how long after a pinpoint read the reads it marked get to
	// explain the catalog changes it covered before every service is re-read.
	grace = time.Second
	// graceTries bounds the extra grace periods a busy dirty set gets.
	graceTries = 10
	// goneKeep is how long a range of vanished checks can explain catalog changes.
	goneKeep = 30 * time.Second
	// pinpointSpacing and pinpointFree: after a read that took d, the next
	// waits pinpointSpacing × (d − pinpointFree), at most pinpointMaxGap (a
	// read slowed by a busy Consul must not hold registrations back long).
	pinpointSpacing = 4
	pinpointFree    = 100 * time.Millisecond
	pinpointMaxGap  = 15 * time.Second
)

type pinpointer struct {
	mu      sync.Mutex
	checks  map[checkKey]string // every check at the last read -> its service ("" for node checks); nil before the first
	index   uint64              // Consul index of the last read
	pending []uint64            // catalog indexes not yet explained
	// gone are index ranges in which checks vanished (deregistrations), from
	// recent reads: a catalog change inside one is explained, even if it is
	// seen only after the read that found the vanished check.
	gone    []span
	verdict []verdict     // catalog changes a read covered, to judge after the grace period
	wake    chan struct{} // buffered 1: requests for a read coalesce
	// reading is set from a request's wake-up until the services its read
	// found are marked: the read's index is recorded before they are.
	reading bool
}

// span is a range (lo, hi] of indexes and when it was recorded.
type span struct {
	lo, hi uint64
	at     time.Time
}

// verdict: the catalog changes covered by one read, judged at due.
type verdict struct {
	covered []uint64
	due     time.Time
	tries   int
}

func newPinpointer() *pinpointer { return &pinpointer{wake: make(chan struct{}, 1)} }

// catalogMoved records a catalog change at index and asks for a read, unless
// a recent deregistration explains it. Requests made while one waits
// coalesce: the read sees every change up to when it runs, so none is lost.
func (p *pinpointer) catalogMoved(index uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.gone {
		if g.lo < index && index <= g.hi {
			return
		}
	}
	p.pending = append(p.pending, index)
	p.request()
}

func (p *pinpointer) request() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// explain marks a catalog change at index as understood.
func (p *pinpointer) explain(index uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.explainLocked(index)
}

func (p *pinpointer) explainLocked(index uint64) {
	if i := slices.Index(p.pending, index); i >= 0 {
		p.pending = slices.Delete(p.pending, i, i+1)
	}
}

// reset forgets what reads before Consul's indexes went backwards found:
// the baseline, the ranges of vanished checks and the changes to explain
// all hold indexes that compare with nothing now. The next read is a new
// baseline.
func (p *pinpointer) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.checks, p.index, p.pending, p.gone, p.verdict = nil, 0, nil, nil, nil
}

// busy says whether a read is requested or running, or a verdict waits.
func (p *pinpointer) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reading || len(p.wake) > 0 || len(p.verdict) > 0
}

func (p *pinpointer) setReading(v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reading = v
}

// lastIndex is the Consul index of the last read; 0 before the first.
func (p *pinpointer) lastIndex() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.index
}

// runPinpoint runs pinpoint reads on request and judges their verdicts,
// until ctx ends. One goroutine does both, so nothing outlives Run.
func (c *Controller) runPinpoint(ctx context.Context) {
	p := c.pinpoint
	// The first read records every check as the baseline for "vanished". It
	// waits for the first sync: until then every service is read anyway, and
	// the whole check list (40 MB at 100,000 instances) would only compete
	// with those reads.
	select {
	case <-ctx.Done():
		return
	case <-c.sync.done:
	}
	p.request()
	var bo backoff
	var next time.Time // no read before this (pinpointSpacing)
	timer := time.NewTimer(time.Hour)
	timer.Stop() // armed only while a verdict is pending
	defer timer.Stop()
	for {
		// The timer runs only while a verdict is pending: with none, nothing
		// is due, however long the catalog stays quiet.
		var due <-chan time.Time
		p.mu.Lock()
		if len(p.verdict) > 0 {
			timer.Reset(time.Until(p.verdict[0].due))
			due = timer.C
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-due:
			c.judge()
		case <-p.wake:
			p.setReading(true)
			if !sleep(ctx, time.Until(next)) {
				return
			}
			// The catalog changes this read must explain: those seen before
			// it started. (Its own index is the checks table's, which need not reach them.)
			p.mu.Lock()
			covered := slices.Clone(p.pending)
			p.mu.Unlock()
			took, err := c.pinpointRead(ctx)
			next = time.Now().Add(pinpointGap(took))
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				d := bo.fail()
				c.status.readFailed("checks", err, d)
				p.request() // before reading ends: busy throughout
				p.setReading(false)
				if !sleep(ctx, d) {
					return
				}
				continue
			}
			bo.reset()
			c.status.readSucceeded()
			p.mu.Lock()
			p.verdict = append(p.verdict, verdict{covered: covered, due: time.Now().Add(grace), tries: graceTries})
			p.reading = false
			p.mu.Unlock()
		}
	}
}

// pinpointGap is the pause after a read of every check whose request took
// took (0: it failed): what the read cost, not how long it waited or hung.
func pinpointGap(took time.Duration) time.Duration {
	return min(pinpointSpacing*max(took-pinpointFree, 0), pinpointMaxGap)
}

// checkRef is what the pinpoint detector needs of a check: where it is and
// when it was created and last written. Decoding only these fields of the
// whole check list skips what Consul's client would allocate for each
// check (output, notes, tags, definition): the list is about 40 MB at
// 100,000 checks, read on every unexplained catalog change.
type checkRef struct {
	Node, CheckID, ServiceName string
	CreateIndex, ModifyIndex   uint64
}

// pinpointRead reads every check and marks the services whose instances
// changed since their last read. It returns how long the request took when
// it succeeded.
func (c *Controller) pinpointRead(ctx context.Context) (took time.Duration, err error) {
	var checks []checkRef
	meta, err := c.consul.get(ctx, request{slot: true, timeout: 3 * c.args.RequestTimeout}, func(q *api.QueryOptions) (*api.QueryMeta, error) {
		start := time.Now()
		m, err := c.consul.Raw().Query("/v1/health/state/"+api.HealthAny, &checks, q)
		if err == nil {
			took = time.Since(start)
		}
		return m, err
	})
	if err != nil {
		return 0, fmt.Errorf("list health checks: %w", err)
	}
	if meta.ResultsFilteredByACLs && len(checks) == 0 {
		return 0, fmt.Errorf("list health checks: %w: the token needs read on service_prefix and node_prefix", errACLFiltered)
	}
	for _, m := range c.pinpoint.changed(checks, meta.LastIndex, c.store) {
		c.dirty.mark(m.need, m.name)
	}
	return took, nil
}

// changed compares a full check list with the last one and with each
// service's last read.
// A service marked for a check written after its last read must be read
// at that check's index at least: the write moved the service's index.
func (p *pinpointer) changed(checks []checkRef, index uint64, st *store) []healthMark {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[checkKey]string, len(checks))
	dirty := map[string]uint64{} // -> the index its read must reach
	for _, hc := range checks {
		k := checkKey{hc.Node, hc.CheckID}
		seen[k] = hc.ServiceName
		for _, name := range checkServices(hc.Node, hc.ServiceName, st.onNode) {
			// Not read yet, or a read may be in flight from before this
			// change: read (again) rather than trust it. A service Consul
			// refuses to show is retried on its own schedule (retry.go).
			if idx, ok, refused := st.readIndexOf(name); !refused && (!ok || hc.ModifyIndex > idx) {
				dirty[name] = max(dirty[name], hc.ModifyIndex)
			}
		}
		p.explainLocked(hc.CreateIndex)
		p.explainLocked(hc.ModifyIndex)
	}
	// Checks deleted after the last read's index, at or before this one's:
	// by the catalog changes seen in that range (a deregistration moves the
	// catalog, the check and its service at one index). A read of their
	// service must reach the newest of those: a lagging server's older
	// answer still lists the instance that left.
	var deletedBy uint64
	for _, i := range p.pending {
		if p.index < i && i <= index {
			deletedBy = max(deletedBy, i)
		}
	}
	vanished := false
	if p.checks != nil {
		for k, svc := range p.checks {
			if _, ok := seen[k]; !ok {
				vanished = true
				for _, name := range checkServices(k.node, svc, st.onNode) {
					dirty[name] = max(dirty[name], deletedBy)
				}
			}
		}
	}
	if vanished {
		now := time.Now()
		p.gone = slices.DeleteFunc(p.gone, func(g span) bool { return now.Sub(g.at) > goneKeep })
		p.gone = append(p.gone, span{p.index, index, now})
		p.pending = slices.DeleteFunc(p.pending, func(i uint64) bool { return p.index < i && i <= index })
	}
	p.checks, p.index = seen, index
	out := make([]healthMark, 0, len(dirty))
	for name, need := range dirty {
		out = append(out, healthMark{name: name, need: need})
	}
	return out
}

// judge takes the oldest due verdict: once the reads its pinpoint read
// marked are done (or it ran out of grace periods), a catalog change it
// covered that is still unexplained re-reads every service.
func (c *Controller) judge() {
	p := c.pinpoint
	p.mu.Lock()
	if len(p.verdict) == 0 {
		p.mu.Unlock()
		return
	}
	v := p.verdict[0]
	if c.dirty.busy() && v.tries > 0 {
		p.verdict[0].tries--
		p.verdict[0].due = time.Now().Add(grace)
		p.mu.Unlock()
		return
	}
	p.verdict = p.verdict[1:]
	var unexplained []uint64
	p.pending = slices.DeleteFunc(p.pending, func(i uint64) bool {
		if slices.Contains(v.covered, i) {
			unexplained = append(unexplained, i)
			return true
		}
		return false
	})
	p.mu.Unlock()
	if len(unexplained) == 0 {
		return
	}
	names := c.catalog.names()
	c.metrics.fullReads.Increment()
	log.Debugf("consul catalog changed at %v with no check or service read to explain it: re-reading all %d services",
		unexplained, len(names))
	// Each read must reach the newest unexplained change: the check read
	// that could not explain it may have come from a server behind it, and
	// so may these (an answer below it is asked of the leader again; the
	// services it did not touch cost that second read, in this rare path).
	c.dirty.mark(slices.Max(unexplained), names...)
}
