package daemon_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestMetricsAndDashboard scrapes a real daemon with its read-only metrics
// token after a start: the series an admin needs are there with JupyterHub's
// label names (status for outcomes), and the Grafana dashboard in deploy/
// parses and names only metrics this scrape has.
func TestMetricsAndDashboard(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.MetricsToken = token()
	// A pool of an env that cannot be pre-warmed (busybox's httpd is no
	// Python console script): its warm server says so and exits, the pool
	// reports it cold, and its starts boot cold.
	team := cfg.Envs["team"]
	team.Cmd = []string{"httpd", "-f", "-p", "8888", "-h", "/tmp"}
	cfg.Envs = map[string]spawnd.EnvConfig{"team": team}
	cfg.SlotsDir = testenv.SlotsDir(t)
	cfg.Pools = []spawnd.PoolConfig{{Env: "team", Size: 1}}
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		ps, err := h.client.Pools(ctx)
		if err == nil && len(ps) == 1 && ps[0].Cold != "" {
			if !strings.Contains(ps[0].Cold, "is not a Python console script") {
				t.Fatalf("the pool's cold reason: %q; want it to say why", ps[0].Cold)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool of an env that cannot be pre-warmed: %+v %v; want it cold, saying why", ps, err)
		}
	}
	if _, err := h.client.Start(ctx, "mo", "", api.StartRequest{Cmd: []string{"httpd", "-f", "-p", "8888", "-h", "/tmp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.WaitReady(ctx, "mo", ""); err != nil {
		t.Fatal(err)
	}
	scrape := func(tok string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+h.addr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := scrape(cfg.MetricsToken)
	if code != 200 {
		t.Fatalf("/metrics with the metrics token: %d", code)
	}
	// The metrics token reads /metrics and nothing else.
	mc, _ := api.NewClient(h.addr, cfg.MetricsToken)
	if _, err := mc.List(ctx); api.ErrorCode(err) != api.CodeUnauthorized {
		t.Errorf("the metrics token listing servers: %v; want unauthorized", err)
	}
	for _, want := range []string{
		`spawnd_build_info{backend="docker",goversion="go`,
		`spawnd_starts_total{status="success"} 1`,
		`spawnd_starts_total{status="failure"} 0`,
		`spawnd_start_failures_total{reason="server_failed"} 0`,
		`spawnd_start_duration_seconds_count{status="success"} 1`,
		`spawnd_servers{env="team",outdated="false",profile="default",state="ready"} 1`,
		`spawnd_starts_queued 0`,
		`spawnd_engine_up 1`,
		`spawnd_build_duration_seconds_count{status="success"} 0`,
		`spawnd_image_pull_duration_seconds_count{status="failure"} 0`,
		`spawnd_pool_cold{pool="team/default"} 1`,
		`spawnd_pool_ready{pool="team/default"} 0`,
		`spawnd_pool_starts_total{how="cold",pool="team/default"} 1`,
		`spawnd_pool_starts_total{how="warm",pool="team/default"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	families := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) `).FindAllStringSubmatch(body, -1) {
		families[m[1]] = true
	}

	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "grafana", "spawnd-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard does not parse: %v", err)
	}
	if dash.Title == "" || len(dash.Panels) < 8 {
		t.Fatalf("the dashboard: title %q, %d panels", dash.Title, len(dash.Panels))
	}
	name := regexp.MustCompile(`\bspawnd_[a-z_]+`)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				fam := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if f := strings.TrimSuffix(n, suffix); f != n && families[f] {
						fam = f
					}
				}
				if !families[fam] {
					t.Errorf("panel %q names %s, which the daemon does not export", p.Title, n)
				}
			}
		}
	}
}
