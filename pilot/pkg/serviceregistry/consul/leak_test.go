package consul

import (
	"testing"

	"istio.io/istio/tests/util/leak"
)

// TestMain fails the package if any test leaves goroutines behind: a
// registry must stop completely when Run's stop channel closes.
func TestMain(m *testing.M) {
	leak.CheckMain(m)
}
