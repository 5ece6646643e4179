package harness

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestMetric(t *testing.T) {
	text := []byte(`# HELP pilot_xds_pushes x
# TYPE pilot_xds_pushes counter
pilot_xds_pushes{type="cds"} 4
pilot_xds_pushes{type="eds"} 10
pilot_xds_pushes{type="cds_senderr"} 1
pilot_xds_pushes_other 99
go_goroutines 812
`)
	assert.Equal(t, 4.0, Metric(text, "pilot_xds_pushes", `type="cds"`))
	assert.Equal(t, 15.0, Metric(text, "pilot_xds_pushes"))
	assert.Equal(t, 812.0, Metric(text, "go_goroutines"))
	assert.Zero(t, Metric(text, "absent"))
	_, n := Samples(text, "go_goroutines")
	assert.Equal(t, 1, n)
	_, n = Samples(text, "pilot_xds_pushes", `type="lds"`)
	assert.Zero(t, n, "no series with that label")
}
