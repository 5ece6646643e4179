package build_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mplOnly are modules whose later releases are under the Business Source
// License, with the versions checked to be MPL-2.0 (each one's LICENSE
// file; docs/licences.md). Consul v1.16.1 is the last MPL-2.0 server; its
// envoyextensions v0.4.1 and troubleshoot v0.3.1 are MPL-2.0, their
// v0.9.0 and v0.8.0 (Consul 1.22) are not.
var mplOnly = map[string][]string{
	"github.com/hashicorp/consul":                 {"v1.16.1"},
	"github.com/hashicorp/consul/envoyextensions": {"v0.4.1"},
	"github.com/hashicorp/consul/troubleshoot":    {"v0.3.1"},
}

// No go.sum of the repository names a release of those modules other than
// the MPL-2.0 ones: a dependency bump that pulled in a BSL release fails here.
func TestNoBusinessSourceLicensedModule(t *testing.T) {
	out, err := exec.Command("git", "-C", "..", "ls-files", "*go.sum").Output()
	require.NoError(t, err)
	sums := strings.Fields(string(out))
	require.NotEmpty(t, sums)
	checked := 0
	for _, sum := range sums {
		f, err := os.Open(filepath.Join("..", sum))
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 2 {
				continue
			}
			allowed, ok := mplOnly[fields[0]]
			if !ok {
				continue
			}
			checked++
			version := strings.TrimSuffix(fields[1], "/go.mod")
			assert.Contains(t, allowed, version, "%s: %s %s is not an MPL-2.0 release", sum, fields[0], version)
		}
		require.NoError(t, sc.Err())
		require.NoError(t, f.Close())
	}
	assert.Positive(t, checked, "the Consul server's wrapper module names Consul")
}
