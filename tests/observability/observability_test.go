package observability

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/pilot-consul/pilot-consul/tests/harness"
)

// TestAlertRulesPassPromtool: Prometheus's own checker accepts the rules,
// and its unit tests (alerts_test.yaml) fire each alert for the registry in
// trouble at its time, and never for the healthy one or before its time.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := harness.Binary("promtool")
	require.NoError(t, err)
	dir := filepath.Join(harness.Root(), Dir)
	for _, args := range [][]string{{"check", "rules", "alerts.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// TestEveryAlertIsUnitTested: alerts_test.yaml has, for every alert, a
// case where it fires and one where it does not.
func TestEveryAlertIsUnitTested(t *testing.T) {
	rules, err := ReadRules(harness.Root(), "alerts.yaml")
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(harness.Root(), Dir, "alerts_test.yaml"))
	require.NoError(t, err)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	require.NoError(t, utilyaml.Unmarshal(b, &tests))
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, g := range tests.Tests {
		for _, c := range g.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	require.NotEmpty(t, rules.Groups)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			assert.True(t, fires[r.Alert], "%s: no unit test where it fires", r.Alert)
			assert.True(t, quiet[r.Alert], "%s: no unit test where it stays quiet", r.Alert)
			assert.Contains(t, r.Annotations["summary"], "{{ $labels.cluster }}", "%s: the summary names the registry", r.Alert)
			assert.NotEmpty(t, r.Labels["severity"], r.Alert)
		}
	}
}

// TestPrometheusRuleIsTheRulesFile: the PrometheusRule manifest carries
// exactly the rules of alerts.yaml.
func TestPrometheusRuleIsTheRulesFile(t *testing.T) {
	plain, err := ReadRules(harness.Root(), "alerts.yaml")
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(harness.Root(), Dir, "alerts-prometheusrule.yaml"))
	require.NoError(t, err)
	var pr struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Spec       RuleFile `json:"spec"`
	}
	require.NoError(t, utilyaml.Unmarshal(b, &pr))
	assert.Equal(t, "monitoring.coreos.com/v1", pr.APIVersion)
	assert.Equal(t, "PrometheusRule", pr.Kind)
	assert.Equal(t, *plain, pr.Spec)
}

// TestDashboardCoversTheRegistry: every query of the dashboard is scoped
// to one registry ($cluster, the row repeated per registry), names only
// metrics the registry declares, and every metric it declares is shown.
// (tests/integration checks the same names against a real istiod's scrape.)
func TestDashboardCoversTheRegistry(t *testing.T) {
	d, err := ReadDashboard(harness.Root())
	require.NoError(t, err)
	src, err := os.ReadFile(filepath.Join(harness.Root(), "pilot/pkg/serviceregistry/consul/metrics.go"))
	require.NoError(t, err)
	declared := map[string]bool{}
	for _, m := range regexp.MustCompile(`monitoring\.New(Gauge|Sum|Distribution)\("(pilot_consul_[a-z_]+)"`).FindAllStringSubmatch(string(src), -1) {
		name := m[2]
		if m[1] == "Distribution" {
			name += "_bucket"
		}
		declared[name] = true
	}
	require.NotEmpty(t, declared)
	shown := map[string]bool{}
	queries := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, q := range p.Targets {
			queries++
			assert.Contains(t, q.Expr, `cluster="$cluster"`, "panel %q: every query is one registry's", p.Title)
			for _, n := range metricName.FindAllString(q.Expr, -1) {
				assert.True(t, declared[n], "panel %q queries %s, which the registry does not declare", p.Title, n)
				shown[n] = true
			}
		}
	}
	for n := range declared {
		assert.True(t, shown[n], "the registry exports %s; no panel shows it", n)
	}
	t.Logf("%d panels, %d queries, %d metrics", len(d.Panels), queries, len(shown))
}
