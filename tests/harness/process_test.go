package harness

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// Ports handed out are free, distinct, and outside the kernel's ephemeral
// range, which outgoing connections share.
func TestFreePortsAvoidTheEphemeralRange(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		ports, err := FreePorts(4)
		assert.NoError(t, err)
		for _, p := range ports {
			assert.Less(t, p, ephemeralLow())
			assert.False(t, seen[p], "port %d handed out twice", p)
			seen[p] = true
		}
	}
}
