package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestReleaseInstallsOnCleanDebian: scripts/release builds what an admin
// installs (static binaries for amd64 and arm64, the .debs, the spawner's
// wheel, SHA256SUMS), and on a clean Debian made from the offline base the
// .deb installs with apt, spawnd --version says the release's version and commit,
// spawnd doctor runs on the shipped config (valid, a private token made at
// install; no engine in there, so it fails there, as it should), and the
// wheel installs into a virtualenv as JupyterHub's spawnd spawner.
func TestReleaseInstallsOnCleanDebian(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	root := testenv.RepoRoot(t)
	dist := t.TempDir()
	version := fmt.Sprintf("0.0.%d", time.Now().Unix()%100000)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	run := func(dir string, name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(root, filepath.Join(root, "scripts", "release"), version, dist)
	run(dist, "sha256sum", "--check", "--strict", "SHA256SUMS")
	for _, f := range []string{"spawnd-" + version + "-linux-amd64", "spawnd-" + version + "-linux-arm64",
		"spawnd_" + version + "_amd64.deb", "spawnd_" + version + "_arm64.deb"} {
		if _, err := os.Stat(filepath.Join(dist, f)); err != nil {
			t.Errorf("the release lacks %s", f)
		}
	}
	if out := run(dist, "file", "spawnd-"+version+"-linux-arm64"); !strings.Contains(out, "ARM aarch64") || !strings.Contains(out, "statically linked") {
		t.Errorf("the arm64 binary: %s", out)
	}
	wheels, _ := filepath.Glob(filepath.Join(dist, "spawnd_spawner-*.whl"))
	if len(wheels) != 1 {
		t.Fatalf("wheels in the release: %v", wheels)
	}

	// A clean Debian: the offline base, nothing of spawnd's in it.
	ctxDir := t.TempDir()
	for _, f := range []string{"spawnd_" + version + "_amd64.deb", filepath.Base(wheels[0])} {
		b, err := os.ReadFile(filepath.Join(dist, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctxDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dockerfile := fmt.Sprintf(`FROM %s
COPY *.deb *.whl /tmp/pkg/
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/pkg/spawnd_%s_amd64.deb python3-venv >/dev/null
RUN python3 -m venv /opt/jupyterhub && /opt/jupyterhub/bin/pip install -q --no-index --no-deps /tmp/pkg/*.whl
`, base, version)
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	image := "spawnd-test/deb-install:" + version
	run(ctxDir, "docker", "build", "-q", "--label", testenv.TestLabel+"=1", "-t", image, ".")
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", image).Run() })
	inside := func(script string) (string, error) {
		cmd := exec.CommandContext(ctx, "docker", "run", "--rm", "--label", testenv.TestLabel+"=1", "--network", "none", image, "sh", "-c", script)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// The release says its version and the commit it was built from
	// (scripts/release stamps it: a build in its container has no VCS).
	head := strings.TrimSpace(run(root, "git", "rev-parse", "HEAD"))
	wantVersion := "spawnd version " + version + " (commit " + head[:12]
	if out, err := inside("spawnd --version"); err != nil || !strings.HasPrefix(strings.TrimSpace(out), wantVersion) {
		t.Errorf("spawnd --version in the installed package: %q %v; want it to begin %q", out, err, wantVersion)
	}
	out, err := inside("stat -c '%a %U' /etc/spawnd/token /srv/spawnd/homes; ls /etc/spawnd/envs; " +
		"spawnd doctor --config /etc/spawnd/spawnd.yaml")
	if err == nil {
		t.Errorf("doctor passed with no engine in the container:\n%s", out)
	}
	for _, want := range []string{"600 root", "755 root", "team.lock.json", "team.yaml", "[ ok ] config", "[ ok ] token", "[FAIL] engine", "[ ok ] sandbox"} {
		if !strings.Contains(out, want) {
			t.Errorf("the installed package: no %q in\n%s", want, out)
		}
	}
	if out, err := inside(`/opt/jupyterhub/bin/python -c "import importlib.metadata as m; ` +
		`print(m.version('spawnd-spawner')); print([e.value for e in m.entry_points(group='jupyterhub.spawners')])"`); err != nil || !strings.Contains(out, "spawnd_spawner:SpawndSpawner") {
		t.Errorf("the wheel in a virtualenv: %q %v; want the spawnd spawner registered with JupyterHub", out, err)
	}
}
