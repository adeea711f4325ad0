package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// debianChromium is the browser binary of Debian's chromium package (the
// /usr/bin/chromium wrapper is a shell script).
const debianChromium = "/usr/lib/chromium/chromium"

// TestBrowserFirstDay is a team member's first day in a real browser:
// Debian's headless Chromium, driven by Playwright (e2e/browser/first_day.py),
// against the shipped hub config on JupyterHub 5 and spawnd serving the
// shipped team env (envs/team.yaml and its lock). The person logs in (after
// a wrong password is refused), sees the spawn page's progress, lands in
// JupyterLab with exactly the team kernel in the launcher and no news
// prompt (issue #31), opens a notebook on "Team (Python 3)", runs
// `import pandas; print(pandas.__version__)` and reads the version the lock
// pins, opens a notebook recorded with "python3" (which the env does not
// offer) and sees it run on the team kernel, and stops the server from the
// hub's control panel. Screenshots go to a directory the test prints.
func TestBrowserFirstDay(t *testing.T) {
	venv := testenv.HubVenv(t, 5)
	if err := exec.Command(filepath.Join(venv, "bin", "python"), "-c", "import playwright").Run(); err != nil {
		ci.Skip(t, "no Playwright in %s (run scripts/hub-venvs)", venv)
	}
	if _, err := os.Stat(debianChromium); err != nil {
		ci.Skip(t, "no Debian Chromium at %s (apt-get install chromium)", debianChromium)
	}
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	root := testenv.RepoRoot(t)
	// The shipped team env as the quickstart builds it: exactly the
	// committed lock, on the base scripts/make-base makes, never relocked.
	teamSpec := filepath.Join(root, "envs", "team.yaml")
	bctx, bcancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer bcancel()
	if _, err := images.Build(bctx, eng, teamSpec, images.Options{CACerts: testenv.HostCACerts(t)}); err != nil {
		t.Fatalf("building the shipped lock envs/team.lock.json: %v", err)
	}
	specText, err := os.ReadFile(teamSpec)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.ReadFile(envs.LockPath(teamSpec))
	if err != nil {
		t.Fatal(err)
	}
	pandas := lockedVersion(t, lock, "pandas")
	// Carmen's server is a warm one (pools, docs/POOLS.md): the whole first
	// day in the browser runs on a server that booted before she came.
	w := newLockedWorld(t, eng, string(specText), lock, venv, func(c *daemon.Config) {
		c.Pools = []spawnd.PoolConfig{{Env: "team", Size: 1}}
		c.SlotsDir = testenv.SlotsDir(t)
	})
	pc, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	waitPool(t, pc, 1, 5*time.Minute)

	// Carmen comes with a notebook recorded elsewhere on "python3", a
	// kernel the team env does not offer: it must open on the team kernel.
	home := filepath.Join(w.homes, spawnd.Escape("carmen"))
	recorded := "recorded-python3.ipynb"
	nb := `{"cells": [{"cell_type": "code", "execution_count": null, "id": "c1", "metadata": {}, "outputs": [], "source": ["1 + 1"]}],
 "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
  "language_info": {"name": "python"}}, "nbformat": 4, "nbformat_minor": 5}
`
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, recorded), []byte(nb), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{home, filepath.Join(home, recorded)} {
		if err := os.Chown(p, 1000, 100); err != nil {
			t.Fatal(err)
		}
	}

	password := randHex(12)
	w.useShippedConfig("SPAWND_HUB_AUTH=dummy", "SPAWND_HUB_PASSWORD="+password)
	w.startHub("")
	defer w.stopHub()

	shots, err := os.MkdirTemp("", "spawnd-browser-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s (kept if the test fails)", shots)
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(shots)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(venv, "bin", "python"), filepath.Join(root, "e2e", "browser", "first_day.py"),
		"--url", fmt.Sprintf("http://127.0.0.1:%d", w.proxyPort), "--user", "carmen", "--password", password,
		"--pandas", pandas, "--shots", shots, "--chromium", debianChromium, "--recorded", recorded)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("the browser's run:\n%s", out)
	if err != nil {
		t.Fatalf("the first day failed in the browser (%v); screenshots in %s\nhub log:\n%s", err, shots, w.logTail())
	}

	// What the browser did is real: the notebook is in carmen's home on the
	// host, and the server the control panel stopped is gone.
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	servers, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if s.User == "carmen" {
			t.Fatalf("stopped from the control panel, but spawnd still runs it: %+v", s)
		}
	}
	if ps, err := c.Pools(ctx); err != nil || len(ps) != 1 || ps[0].Taken != 1 || ps[0].Missed != 0 {
		t.Fatalf("pools after the first day: %+v %v; want carmen's one start to have taken the warm server", ps, err)
	}
	nbs, _ := filepath.Glob(filepath.Join(home, "*.ipynb"))
	var made string
	for _, p := range nbs {
		if filepath.Base(p) != recorded {
			made = p
		}
	}
	if made == "" {
		t.Fatalf("no notebook in carmen's home after the browser made one: %v", nbs)
	}
	b, _ := os.ReadFile(made)
	if !strings.Contains(string(b), `"name": "team"`) || !strings.Contains(string(b), pandas) {
		t.Fatalf("the notebook in carmen's home has no team kernel or no pandas output:\n%.1500s", b)
	}
}

// lockedVersion is the version a lock pins for a pip package.
func lockedVersion(t *testing.T, lock []byte, name string) string {
	t.Helper()
	var l struct {
		Pip struct {
			Packages []struct{ Name, Version string } `json:"packages"`
		} `json:"pip"`
	}
	if err := json.Unmarshal(lock, &l); err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Pip.Packages {
		if p.Name == name {
			return p.Version
		}
	}
	t.Fatalf("the lock pins no %s", name)
	return ""
}
