package consul

import "time"

// bumpGrace is how long a catalog change may wait for the checks watch to
// explain it. Both watches wake on the same Raft write, so this is generous.
const bumpGrace = time.Second

// bumpTracker handles the one change the checks watch cannot see: an instance
// without health checks (de)registered in a service whose tags stay the same.
// The catalog index moves but names and tags do not. If a check changed at
// the same Raft index, readChecks already queued the service; otherwise the
// registry re-reads every service, which is rare and always correct.
type bumpTracker struct {
	pending []uint64 // catalog indexes not yet explained
}

func (b *bumpTracker) add(index uint64) {
	b.pending = append(b.pending, index)
}

// explain marks a catalog change at index as seen by the checks watch.
func (b *bumpTracker) explain(index uint64) {
	if len(b.pending) == 0 {
		return
	}
	for i, p := range b.pending {
		if p == index {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			return
		}
	}
}

// resolveBumps re-reads every service if a catalog change stayed unexplained.
func (c *Controller) resolveBumps() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.bumps.pending) == 0 {
		return
	}
	c.bumps.pending = nil
	log.Debugf("consul catalog changed with no check change to explain it: re-reading all %d services", len(c.catalog))
	now := time.Now()
	for name := range c.catalog {
		c.markDirtyLocked(name, now)
	}
}
