package bench

import (
	"slices"
	"time"
)

// Stats is a latency distribution in milliseconds.
type Stats struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Summarize computes nearest-rank percentiles.
func Summarize(d []time.Duration) Stats {
	ms := millis(d)
	slices.Sort(ms)
	if len(ms) == 0 {
		return Stats{}
	}
	rank := func(p float64) float64 {
		i := int(p*float64(len(ms))+0.999999) - 1
		return ms[min(max(i, 0), len(ms)-1)]
	}
	return Stats{Count: len(ms), P50: rank(.50), P90: rank(.90), P99: rank(.99), Max: ms[len(ms)-1]}
}

func millis(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v) / float64(time.Millisecond)
	}
	return out
}
