// Package observability reads what build/install/observability ships for
// operators — the Grafana dashboard and the Prometheus alerting rules — so
// that tests can hold them to the metrics istiod really exports.
package observability

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Dir is where the files live, relative to the repository root.
const Dir = "build/install/observability"

// Dashboard is the part of a Grafana dashboard the checks read.
type Dashboard struct {
	Panels []Panel `json:"panels"`
}

// Panel is one dashboard panel (a row has no targets).
type Panel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// RuleFile is a Prometheus rules file.
type RuleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []Rule `json:"rules"`
	} `json:"groups"`
}

// Rule is one alerting rule.
type Rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// ReadDashboard parses the dashboard.
func ReadDashboard(root string) (*Dashboard, error) {
	b, err := os.ReadFile(filepath.Join(root, Dir, "dashboard.json"))
	if err != nil {
		return nil, err
	}
	d := &Dashboard{}
	if err := json.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("dashboard.json: %w", err)
	}
	return d, nil
}

// ReadRules parses a rules file of the directory (alerts.yaml).
func ReadRules(root, name string) (*RuleFile, error) {
	b, err := os.ReadFile(filepath.Join(root, Dir, name))
	if err != nil {
		return nil, err
	}
	r := &RuleFile{}
	if err := utilyaml.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return r, nil
}

// metricName matches the registry's metric names in a query.
var metricName = regexp.MustCompile(`\bpilot_consul_[a-z_]+\b`)

// UsedMetrics lists, sorted, the metric names the dashboard's queries and
// the alerting rules use (as scraped: a histogram's _bucket series).
func UsedMetrics(root string) ([]string, error) {
	d, err := ReadDashboard(root)
	if err != nil {
		return nil, err
	}
	r, err := ReadRules(root, "alerts.yaml")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, metricName.FindAllString(t.Expr, -1)...)
		}
	}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			out = append(out, metricName.FindAllString(rule.Expr, -1)...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
