package harness

import (
	"strconv"
	"strings"
)

// Metric sums the samples of a Prometheus text exposition whose name is name
// and whose labels include every label="value" pair given.
func Metric(text []byte, name string, labels ...string) float64 {
	sum, _ := Samples(text, name, labels...)
	return sum
}

// Samples is Metric's sum with the number of samples that matched: a
// series exported at zero counts.
func Samples(text []byte, name string, labels ...string) (sum float64, n int) {
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		var lbls string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbls, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer metric name sharing the prefix
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(","+lbls+",", ","+l+",") {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
			n++
		}
	}
	return sum, n
}
