package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// internalEnv are variables our scripts and tests read that no user sets:
// set by one of our scripts for a process it starts, or standard variables
// of other tools.
var internalEnv = map[string]string{
	"E2E_CONSUL_IMAGE": "set by build/e2e-kind.sh for the kind suite", "E2E_ECHO_IMAGE": "set by build/e2e-kind.sh",
	"E2E_NODE_IMAGE": "set by build/e2e-kind.sh", "E2E_OWN_NODE_IMAGE": "set by build/e2e-kind.sh",
	"E2E_PILOT_IMAGE": "set by build/e2e-kind.sh", "E2E_PROXY_HUB": "set by build/e2e-kind.sh",
	"E2E_MCP_IMAGE": "set by build/e2e-kind.sh", "E2E_UPSTREAM_PILOT_IMAGE": "set by build/e2e-kind.sh",
	"E2E_PREVIOUS_RELEASE": "set by build/e2e-kind.sh", "E2E_PREVIOUS_PILOT_IMAGE": "set by build/e2e-kind.sh",
	"E2E_PREVIOUS_PROXY_TAG": "set by build/e2e-kind.sh",
	"E2E_PROXY_TAG":          "set by build/e2e-kind.sh", "PILOT_CONSUL_WORKLOAD": "set by the harness for the echo workload",
	"RUNC_CAPFIX_RUNC": "set by build/docker-up.sh for runc-capfix", "PILOT_CONSUL_DOCKERD_PID": "set by build/docker-up.sh",
	"GRPC_XDS_BOOTSTRAP": "grpc-go's own", "DOCKER_HOST": "Docker's own", "TMPDIR": "the system's", "XDG_CACHE_HOME": "the system's",
}

// TestConfigurationReferenceMatchesTheFlags: docs/configuration.md names
// every Consul flag `pilot-discovery discovery --help` lists and every
// Consul environment variable the registry reads, and nothing else; its
// build-time settings are variables our Makefile, scripts and tests read,
// and every one of those a user can set is there.
func TestConfigurationReferenceMatchesTheFlags(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(harness.Root(), "docs/configuration.md"))
	require.NoError(t, err)
	table, buildTime := splitReference(t, string(doc))

	bin, err := harness.Binary("pilot-discovery")
	require.NoError(t, err)
	help, err := exec.Command(bin, "discovery", "--help").CombinedOutput()
	require.NoError(t, err, "%s", help)
	args := readSource(t, "pilot/pkg/serviceregistry/consul/args.go")

	flagRe := regexp.MustCompile(`--(consul[A-Za-z]+)`)
	helpFlags := unique(flagRe.FindAllStringSubmatch(string(help), -1))
	docFlags := unique(flagRe.FindAllStringSubmatch(table, -1))
	require.NotEmpty(t, helpFlags)
	for _, f := range docFlags {
		known := slices.Contains(helpFlags, f) || strings.Contains(args, `"`+f+`"`) // hidden: a deprecated spelling
		assert.True(t, known, "docs/configuration.md documents --%s, which pilot-discovery does not know", f)
	}
	for _, f := range helpFlags {
		assert.Contains(t, docFlags, f, "pilot-discovery has --%s; docs/configuration.md does not document it", f)
	}

	envRe := regexp.MustCompile(`\b(CONSUL_[A-Z_]+)\b`)
	codeEnv := unique(regexp.MustCompile(`"(CONSUL_[A-Z_]+)"`).FindAllStringSubmatch(args, -1))
	docEnv := unique(envRe.FindAllStringSubmatch(table, -1))
	require.NotEmpty(t, codeEnv)
	assert.ElementsMatch(t, codeEnv, docEnv, "Consul environment variables: read by args.go vs documented")

	known := readSource(t, "Makefile") + readSource(t, ".ci/run") + readSource(t, "VERSION")
	for _, dir := range []string{"build", "tests"} {
		require.NoError(t, filepath.WalkDir(filepath.Join(harness.Root(), dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !(strings.HasSuffix(p, ".sh") || strings.HasSuffix(p, ".go")) || strings.HasSuffix(p, "_test.go") && strings.Contains(p, "tests/install") {
				return err
			}
			b, err := os.ReadFile(p)
			known += string(b)
			return err
		}))
	}
	bins := readSource(t, "tests/harness/bins.go")
	documented := unique(regexp.MustCompile("`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`").FindAllStringSubmatch(buildTime, -1))
	require.NotEmpty(t, documented)
	for _, v := range documented {
		if tool, ok := strings.CutSuffix(v, "_BIN"); ok { // harness.Binary's override: <TOOL>_BIN
			assert.Contains(t, bins, `"`+strings.ReplaceAll(strings.ToLower(tool), "_", "-")+`"`, "%s names no tool harness.Binary knows", v)
			continue
		}
		assert.True(t, regexp.MustCompile(`\b`+v+`\b`).MatchString(known), "docs/configuration.md documents %s, which nothing reads", v)
	}
	for _, v := range readBySetup(t, known) {
		if _, internal := internalEnv[v]; !internal {
			assert.Contains(t, documented, v, "%s is read by the Makefile, a script or a test; docs/configuration.md does not document it", v)
		}
	}
	for _, tool := range regexp.MustCompile(`case ([^:]+):`).FindAllStringSubmatch(bins, -1) {
		for _, name := range regexp.MustCompile(`"([a-z-]+)"`).FindAllStringSubmatch(tool[1], -1) {
			v := strings.ToUpper(strings.ReplaceAll(name[1], "-", "_")) + "_BIN"
			assert.Contains(t, documented, v, "harness.Binary reads %s; docs/configuration.md does not document it", v)
		}
	}
}

// splitReference cuts the page into the flag table and the build-time settings.
func splitReference(t *testing.T, doc string) (table, buildTime string) {
	t.Helper()
	var rows []string
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "| `--") {
			rows = append(rows, l)
		}
	}
	_, after, ok := strings.Cut(doc, "Build-time settings:")
	require.True(t, ok, "docs/configuration.md has no build-time settings")
	return strings.Join(rows, "\n"), after
}

// readBySetup lists the variables the Makefile (`X ?=`), our shell scripts
// (`${X:-…}`) and our Go tests (os.Getenv, or a helper given the name) read.
func readBySetup(t *testing.T, src string) []string {
	t.Helper()
	var out []string
	for _, re := range []string{`(?m)^([A-Z][A-Z0-9_]+) \?=`, `\$\{([A-Z][A-Z0-9_]+):?[-+]`, `os\.(?:Getenv|LookupEnv)\("([A-Z][A-Z0-9_]+)"\)`, `env[A-Z][a-z]*\(t, "([A-Z][A-Z0-9_]+)"`} {
		out = append(out, unique(regexp.MustCompile(re).FindAllStringSubmatch(src, -1))...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func readSource(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.Root(), rel))
	require.NoError(t, err)
	return string(b)
}

func unique(ms [][]string) []string {
	var out []string
	for _, m := range ms {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// TestMCPReferenceMatchesTheFlags: consul-mcp takes exactly the registry's
// flags that pilot-discovery has (one Args, one AddFlags), and docs/mcp.md
// documents every flag of its own, and nothing it lacks.
func TestMCPReferenceMatchesTheFlags(t *testing.T) {
	help := func(name string, args ...string) string {
		bin, err := harness.Binary(name)
		require.NoError(t, err)
		out, err := exec.Command(bin, args...).CombinedOutput()
		if name == "consul-mcp" { // pflag's --help exits 0 after printing on stderr
			require.NoError(t, err, "%s", out)
		}
		return string(out)
	}
	flagRe := regexp.MustCompile(`(?m)^\s+--([A-Za-z_]+)`)
	mcp := unique(flagRe.FindAllStringSubmatch(help("consul-mcp", "--help"), -1))
	istiod := unique(flagRe.FindAllStringSubmatch(help("pilot-discovery", "discovery", "--help"), -1))
	var own []string
	for _, f := range mcp {
		if strings.HasPrefix(f, "consul") {
			assert.Contains(t, istiod, f, "consul-mcp has --%s; pilot-discovery does not", f)
		} else {
			own = append(own, f)
		}
	}
	for _, f := range istiod {
		if strings.HasPrefix(f, "consul") {
			assert.Contains(t, mcp, f, "pilot-discovery has --%s; consul-mcp does not", f)
		}
	}
	doc := readSource(t, "docs/mcp.md")
	var rows []string
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "| `--") {
			rows = append(rows, l)
		}
	}
	documented := unique(regexp.MustCompile("`--([A-Za-z_]+)`").FindAllStringSubmatch(strings.Join(rows, "\n"), -1))
	require.NotEmpty(t, own)
	assert.ElementsMatch(t, own, documented, "consul-mcp's own flags vs docs/mcp.md's table")
}
