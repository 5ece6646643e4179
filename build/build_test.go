// Tests of the build pipeline scripts (the scripts are the product here).
package build_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// istioDir is the pinned Istio module source (read-only).
func istioDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", "-c", "source ./lib.sh && istio_module_dir $ISTIO_VERSION").Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(out))
}

// A source tree that moved under a patch makes the build stop, naming the
// patch and the conflicting file and saying how to continue.
func TestConflictingSourceNamesPatchAndFiles(t *testing.T) {
	src := t.TempDir()
	istio := istioDir(t)
	// Only what the queue touches, plus go.mod: enough to apply patches.
	for _, f := range []string{"go.mod", "pilot/pkg/serviceregistry/provider/providers.go",
		"pilot/pkg/bootstrap/options.go", "pilot/cmd/pilot-discovery/app/cmd.go",
		"pilot/pkg/bootstrap/servicecontroller.go"} {
		data, err := os.ReadFile(filepath.Join(istio, f))
		require.NoError(t, err)
		if strings.HasSuffix(f, "servicecontroller.go") {
			// Upstream adds its own case exactly where 0002 adds Consul's.
			before := "\t\tdefault:\n\t\t\treturn fmt.Errorf(\"service registry"
			require.Contains(t, string(data), before)
			data = []byte(strings.Replace(string(data), before,
				"\t\tcase provider.External:\n\t\t\tlog.Infof(\"external\")\n"+before, 1))
		}
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(src, f)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(src, f), data, 0o644))
	}
	work := t.TempDir()
	cmd := exec.Command("./build.sh")
	cmd.Env = append(os.Environ(), "ISTIO_SRC="+src, "WORK_DIR="+work)
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "build must fail:\n%s", out)
	text := string(out)
	assert.Contains(t, text, "patch 2 of 2 does not apply: patches/0002-")
	assert.Contains(t, text, "    pilot/pkg/bootstrap/servicecontroller.go")
	assert.Contains(t, text, "git am --continue")
	assert.Contains(t, text, "make rebase")
	// The tree is left mid-am for inspection, and a rerun refuses to clobber it.
	assert.DirExists(t, filepath.Join(work, "istio/.git/rebase-apply"))
	out, err = exec.Command("env", "ISTIO_SRC="+src, "WORK_DIR="+work, "./build.sh").CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "half-applied")
}

func TestVerifyPatchesPasses(t *testing.T) {
	out, err := exec.Command("./verify-patches.sh").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "queue applies to istio.io/istio@v0.0.0-20260826214018-9739e10eb9d7")
	assert.Contains(t, string(out), "queue applies to istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad")
}
