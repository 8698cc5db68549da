package check

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// deployDir is deploy/, this module's parent.
const deployDir = ".."

var promql = parser.NewParser(parser.Options{})

// exprUse is what the expressions of a file name: metrics, and the label
// values they match on.
type exprUse struct {
	metrics  map[string][]string // metric -> where
	recorded map[string]bool     // names recording rules define
}

func newExprUse() *exprUse {
	return &exprUse{metrics: map[string][]string{}, recorded: map[string]bool{}}
}

// add parses expr (from where) and notes its metrics; it checks the values
// it matches on the labels the daemon sets from a fixed set.
func (u *exprUse) add(t *testing.T, where, expr string) {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %v\n%s", where, err, expr)
		return
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel {
				name = m.Value
				continue
			}
			checkLabelValues(t, where, m)
		}
		if name == "" {
			t.Errorf("%s: a selector without a metric name: %s", where, vs)
			return nil
		}
		u.metrics[name] = append(u.metrics[name], where)
		return nil
	})
}

// labelValues are the values the daemon gives the labels it sets from a
// fixed set (metrics.go); reason is checked against reasonCodes.
var labelValues = map[string][]string{
	"direction": {"in", "out"},
	"decision":  {"accept", "reject", "alive", "suspect", "dead", "removed", "other"},
	"side":      {"caller", "handler"},
	"state":     {"alive", "suspect", "dead"},
}

// checkLabelValues fails when m matches values of a daemon label that it
// never has: a typo in a reason code would make an alert that cannot fire.
func checkLabelValues(t *testing.T, where string, m *labels.Matcher) {
	t.Helper()
	var alts []string
	switch m.Type {
	case labels.MatchEqual, labels.MatchNotEqual:
		alts = []string{m.Value}
	case labels.MatchRegexp, labels.MatchNotRegexp:
		if !regexp.MustCompile(`^[a-z_|]+$`).MatchString(m.Value) {
			return // not a plain list of alternatives
		}
		alts = strings.Split(m.Value, "|")
	}
	for _, v := range alts {
		switch {
		case m.Name == "reason":
			if v != "" && v != "other" && !reasonCodes(t)[v] {
				t.Errorf("%s: reason %q is no reason code of meshagent", where, v)
			}
		case labelValues[m.Name] != nil:
			known := false
			for _, k := range labelValues[m.Name] {
				known = known || k == v
			}
			if !known {
				t.Errorf("%s: %s=%q: the daemon's values are %v", where, m.Name, v, labelValues[m.Name])
			}
		}
	}
}

// rulesUse parses the alert rules with Prometheus's own rule loader.
func rulesUse(t *testing.T) *exprUse {
	t.Helper()
	path := filepath.Join(deployDir, "prometheus", "alerts.yml")
	groups, errs := rulefmt.ParseFile(path, false, model.LegacyValidation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	u := newExprUse()
	alerts := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				u.recorded[r.Record] = true
				u.add(t, "record "+r.Record, r.Expr)
				continue
			}
			alerts[r.Alert] = true
			u.add(t, "alert "+r.Alert, r.Expr)
			if r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("alert %s: no summary or severity", r.Alert)
			}
		}
	}
	// The alerts issue 16 asks for.
	for _, a := range []string{"MeshagentCredentialExpiringSoon", "MeshagentCredentialRenewalOverdue", "MeshagentAgentsDead",
		"MeshagentHostileRejectionsRising", "MeshagentReplayGuardFilling"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}
	return u
}

// grafanaVars stand in for the dashboard's variables, so that its
// expressions parse as Prometheus will see them.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*")

// dashboardUse parses the Grafana dashboard and every expression in it.
func dashboardUse(t *testing.T) *exprUse {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, "grafana", "meshagent.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string `json:"title"`
		UID        string `json:"uid"`
		Panels     []dashPanel
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("grafana/meshagent.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("grafana/meshagent.json: title %q, uid %q, %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	u := newExprUse()
	targets := 0
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			targets++
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: target %d has no expression", p.Title, i)
				continue
			}
			u.add(t, fmt.Sprintf("panel %q", p.Title), grafanaVars.Replace(tg.Expr))
		}
	}
	labelValuesOf := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-z_]+\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: query: %v", v.Name, err)
			continue
		}
		g := labelValuesOf.FindStringSubmatch(q.Query)
		if g == nil {
			t.Errorf("variable %s: %q is not label_values(METRIC, LABEL)", v.Name, q.Query)
			continue
		}
		u.metrics[g[1]] = append(u.metrics[g[1]], "variable "+v.Name)
	}
	if targets < 10 {
		t.Fatalf("only %d panel expressions: is the dashboard read right?", targets)
	}
	return u
}

type dashPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// TestAlertRulesParse loads the rules as Prometheus does.
func TestAlertRulesParse(t *testing.T) { rulesUse(t) }

// TestDashboardParses reads the dashboard's JSON and parses every
// expression in it.
func TestDashboardParses(t *testing.T) { dashboardUse(t) }

// Every metric the rules and the dashboard name is on the /metrics of
// running daemons (two, after a call and a refused one), or is recorded by
// the rules.
func TestMetricsExistOnARunningDaemon(t *testing.T) {
	rules, dash := rulesUse(t), dashboardUse(t)
	exported := scrapeMesh(t) // daemon_test.go
	var missing []string
	for _, u := range []*exprUse{rules, dash} {
		for name, where := range u.metrics {
			if !exported[name] && !rules.recorded[name] {
				missing = append(missing, fmt.Sprintf("%s (%s)", name, strings.Join(where, ", ")))
			}
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not on a running daemon's /metrics: %s", m)
	}
	t.Logf("%d metric names on /metrics; the rules name %d, the dashboard %d", len(exported), len(rules.metrics), len(dash.metrics))
}
