package bench

import (
	"context"
	"fmt"
	"time"
)

// setHealth is one route's way of flipping an instance: a Consul check write
// (Route A) or a WorkloadEntry update (Route B).
type setHealth func(ctx context.Context, in Instance, healthy bool) error

// churn flips instance health at rate per second for d, alternating between
// taking a fresh instance out and putting back the oldest one taken out (once
// every watcher has seen it leave, so two flips of one endpoint never race).
// It returns the number of writes; Expect is called before each.
func churn(ctx context.Context, data Dataset, t *Tracker, set setHealth, rate float64, d time.Duration) (int, []<-chan struct{}, error) {
	var (
		taken  []takenOut
		waits  []<-chan struct{}
		next   int
		writes int
	)
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	end := time.After(d)
	for {
		select {
		case <-ctx.Done():
			return writes, waits, ctx.Err()
		case <-end:
			return writes, waits, nil
		case <-tick.C:
		}
		restore := false
		if writes%2 == 1 && len(taken) > 0 {
			select {
			case <-taken[0].seen:
				restore = true
			default:
			}
		}
		if restore {
			in := taken[0].in
			taken = taken[1:]
			waits = append(waits, t.Expect(data.Cluster(in.Svc), data.Addr(in), true))
			if err := set(ctx, in, true); err != nil {
				return writes, waits, fmt.Errorf("restore %s: %w", data.ID(in), err)
			}
		} else {
			// Consecutive flips hit different services; the instance index
			// advances once every service has lost one.
			if len(taken) >= data.N*data.M/2 {
				continue // pushes are behind (see debounce in docs/performance.md): wait rather than empty the services
			}
			in := Instance{Svc: next % data.N, Idx: (next / data.N) % data.M}
			next++
			for isTaken(taken, in) {
				in = Instance{Svc: next % data.N, Idx: (next / data.N) % data.M}
				next++
			}
			seen := t.Expect(data.Cluster(in.Svc), data.Addr(in), false)
			waits = append(waits, seen)
			taken = append(taken, takenOut{in, seen})
			if err := set(ctx, in, false); err != nil {
				return writes, waits, fmt.Errorf("take out %s: %w", data.ID(in), err)
			}
		}
		writes++
	}
}

// takenOut is an instance churn took out and will put back.
type takenOut struct {
	in   Instance
	seen <-chan struct{} // closed once every watcher saw it leave
}

func isTaken(taken []takenOut, in Instance) bool {
	for _, o := range taken {
		if o.in == in {
			return true
		}
	}
	return false
}

// churnAndDeliver churns as cfg says, then waits up to deliveryBound for
// every change to reach the watchers that did not see it yet: how many
// changes it made and how long the churn itself took.
func churnAndDeliver(ctx context.Context, data Dataset, t *Tracker, set setHealth, cfg Config) (int, time.Duration, error) {
	start := time.Now()
	n, waits, err := churn(ctx, data, t, set, cfg.Rate, cfg.Churn)
	took := time.Since(start)
	if err != nil {
		return n, took, err
	}
	deadline := time.After(deliveryBound)
	for _, w := range waits {
		select {
		case <-w:
		case <-deadline:
			return n, took, nil
		}
	}
	return n, took, nil
}

// deliveryBound is how long churn's last changes get to arrive; the
// rest are unseen.
const deliveryBound = 30 * time.Second
