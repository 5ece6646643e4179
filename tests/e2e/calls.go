package e2e

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Counts makes n calls and counts answers per server; errors count as "error".
func Counts(c Caller, n int) map[string]int {
	out, _ := counts(c, n)
	return out
}

// counts is Counts, and the last error.
func counts(c Caller, n int) (map[string]int, error) {
	out := map[string]int{}
	var last error
	for range n {
		who, err := c.Call(5 * time.Second)
		if err != nil {
			who, last = "error", err
		}
		out[who]++
	}
	return out, last
}

// EventuallyServedBy calls until, within one window of calls, exactly the
// wanted servers answer; it returns how long that took.
func EventuallyServedBy(t *testing.T, c Caller, want ...string) time.Duration {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	start := time.Now()
	var last map[string]int
	var lastErr error
	for time.Since(start) < 30*time.Second {
		last, lastErr = counts(c, 10*len(want))
		got := make([]string, 0, len(last))
		for k := range last {
			got = append(got, k)
		}
		if slices.Equal(slices.Sorted(slices.Values(got)), want) {
			return time.Since(start)
		}
	}
	t.Fatalf("never served by exactly %v; last window: %v (last error: %v)", want, last, lastErr)
	return 0
}

// WaitUntilGone measures how long after since calls stop reaching server
// gone: the time of the first call of a streak of 50 that never hit it.
func WaitUntilGone(t *testing.T, c Caller, gone string, since time.Time) time.Duration {
	t.Helper()
	streak, streakStart := 0, time.Now()
	for time.Since(since) < 30*time.Second {
		callAt := time.Now()
		who, err := c.Call(5 * time.Second)
		require.NoError(t, err)
		if who == gone {
			streak = 0
			continue
		}
		if streak == 0 {
			streakStart = callAt
		}
		if streak++; streak == 50 {
			return streakStart.Sub(since)
		}
	}
	t.Fatalf("calls still reach %s after 30s", gone)
	return 0
}

// WaitUntilServedBy measures how long after since every call lands on the
// wanted servers: the time of the first call of a streak of 50 that did.
func WaitUntilServedBy(t *testing.T, c Caller, since time.Time, want ...string) time.Duration {
	t.Helper()
	streak, streakStart := 0, time.Now()
	var last string
	for time.Since(since) < 30*time.Second {
		callAt := time.Now()
		who, err := c.Call(5 * time.Second)
		if err != nil || !slices.Contains(want, who) {
			streak, last = 0, who
			continue
		}
		if streak == 0 {
			streakStart = callAt
		}
		if streak++; streak == 50 {
			return streakStart.Sub(since)
		}
	}
	t.Fatalf("calls are not all served by %v 30s after; the last one that was not: %q", want, last)
	return 0
}
