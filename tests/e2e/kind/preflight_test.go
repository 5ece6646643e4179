package kind

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Where no Docker daemon answers, the suite refuses at once with the reason
// (build/e2e-kind.sh starts one first; the suite itself is built only with
// -tags e2ekind).
func TestPreflightFailsFastWithoutDocker(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix://"+t.TempDir()+"/no-docker.sock")
	start := time.Now()
	err := Preflight()
	require.ErrorIs(t, err, ErrNoDocker)
	assert.Contains(t, err.Error(), "make test-kind")
	assert.Less(t, time.Since(start), 10*time.Second)
}

func TestFromEnvNamesWhatIsMissing(t *testing.T) {
	for _, v := range []string{"E2E_NODE_IMAGE", "E2E_PILOT_IMAGE", "E2E_PROXY_HUB", "E2E_PROXY_TAG", "E2E_ECHO_IMAGE", "E2E_CONSUL_IMAGE"} {
		t.Setenv(v, "")
	}
	t.Setenv("E2E_ECHO_IMAGE", "echo:1")
	_, err := FromEnv()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "E2E_PILOT_IMAGE")
	assert.Contains(t, err.Error(), "E2E_NODE_IMAGE")
	assert.NotContains(t, err.Error(), "E2E_ECHO_IMAGE")
	assert.Contains(t, err.Error(), "make test-kind")
}
