package aggregator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// grafanaDashboard is the part of docs/grafana/heartbeat.json the test
// reads.
type grafanaDashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	} `json:"panels"`
}

var metricName = regexp.MustCompile(`\bheartbeat_[a-z0-9_]+\b`)

// The Grafana dashboard parses and names only metrics that a real
// aggregator's /metrics exposes (the alert rules:
// TestAlertRulesNameExposedMetrics).
func TestGrafanaDashboardNamesExposedMetrics(t *testing.T) {
	checkLeaks(t)
	raw, err := os.ReadFile("../docs/grafana/heartbeat.json")
	require.NoError(t, err)
	var d grafanaDashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	require.NotEmpty(t, d.UID)
	require.NotEmpty(t, d.Title)

	e := newEnv(t, Config{}, nil)
	srv := httptest.NewServer(e.a.HTTPHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	exposed := make([]string, 0, len(families))
	for name := range families {
		exposed = append(exposed, name)
	}

	var exprs []string
	ids := map[int]bool{}
	for _, panel := range d.Panels {
		require.NotEmpty(t, panel.Type, "panel %d", panel.ID)
		require.NotEmpty(t, panel.Title, "panel %d", panel.ID)
		require.False(t, ids[panel.ID], "duplicate panel id %d", panel.ID)
		ids[panel.ID] = true
		for _, tg := range panel.Targets {
			require.NotEmpty(t, tg.RefID, "panel %q", panel.Title)
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}
	require.NotEmpty(t, exprs)
	var used []string
	for _, expr := range exprs {
		names := metricName.FindAllString(expr, -1)
		require.NotEmpty(t, names, "query names no heartbeat_ metric: %s", expr)
		for _, n := range names {
			require.Contains(t, exposed, n, "query %s names a metric /metrics does not expose", expr)
			used = append(used, n)
		}
	}
	// The panels the dashboard promises.
	for _, want := range []string{"heartbeat_nodes", "heartbeat_nodes_in_consensus",
		"heartbeat_heartbeats_received_total", "heartbeat_rejected_total",
		"heartbeat_aggregator_disrupted"} {
		require.True(t, slices.Contains(used, want), "no panel uses %s", want)
	}
}

// The alerting rules in docs/alerts.yml name only heartbeat_ metrics that a
// real aggregator's /metrics exposes, the per-node heartbeat_node_up
// included (its series exist once a node beats).
func TestAlertRulesNameExposedMetrics(t *testing.T) {
	checkLeaks(t)
	raw, err := os.ReadFile("../docs/alerts.yml")
	require.NoError(t, err)

	e := newEnv(t, Config{}, nil)
	s := newSender(t)
	st := s.open(t, e)
	encode(t, st, legacyHeartbeat{Head: "{ bafy2bzaceabc }", Height: 444, Nickname: "node-1"})
	e.rec.waitBeats(t, s.id(), 1)

	srv := httptest.NewServer(e.a.HTTPHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)

	up := families["heartbeat_node_up"]
	require.NotNil(t, up, "no heartbeat_node_up series for a beating node")
	require.Len(t, up.GetMetric(), 1)
	require.Equal(t, s.id().String(), labelValue(up.GetMetric()[0], "peer_id"))
	require.Len(t, up.GetMetric()[0].GetLabel(), 1, "peer_id is the only label: no nickname")
	require.Equal(t, 1.0, up.GetMetric()[0].GetGauge().GetValue())

	var used []string
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, n := range metricName.FindAllString(line, -1) {
			require.Contains(t, families, n, "docs/alerts.yml names %s, which /metrics does not expose: %s", n, line)
			used = append(used, n)
		}
	}
	require.Contains(t, used, "heartbeat_node_up", "the per-node rule")
	require.Contains(t, used, "heartbeat_aggregator_disrupted")
}
