package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestQuickstart runs the README's first command, scripts/quickstart, in a
// scratch state directory and on free ports: it must bring up spawnd and
// JupyterHub and print a URL and login that work through the proxy; run
// again, it must rebuild and restart nothing.
func TestQuickstart(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "scripts/quickstart runs as root")
	}
	eng := testenv.Engine(t)
	root := testenv.RepoRoot(t)
	state := filepath.Join(t.TempDir(), "state")
	inst := "qs" + randHex(3)
	hubPort := freePort(t)
	env := append(os.Environ(), "SPAWND_STATE="+state, "SPAWND_INSTANCE="+inst,
		fmt.Sprintf("SPAWND_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_HUB_PORT=%d", hubPort),
		fmt.Sprintf("SPAWND_HUB_API_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_PROXY_API_PORT=%d", freePort(t)))
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "scripts", "quickstart"), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("quickstart %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(root, "scripts", "quickstart"), "stop")
		cmd.Env = env
		_ = cmd.Run()
		testenv.RemoveInstance(eng, inst)
	})

	first := run()
	url := fmt.Sprintf("http://127.0.0.1:%d/", hubPort)
	if !strings.Contains(first, "URL:       "+url) || !strings.Contains(first, "password:") {
		t.Fatalf("quickstart did not print the URL and login:\n%s", first)
	}
	password, err := os.ReadFile(filepath.Join(state, "hub", "password"))
	if err != nil {
		t.Fatal(err)
	}
	loginAndSpawn(t, strings.TrimSuffix(url, "/"), "erin", strings.TrimSpace(string(password)), nil)

	second := run()
	for _, want := range []string{"nothing to build", "spawnd already running", "JupyterHub already running"} {
		if !strings.Contains(second, want) {
			t.Fatalf("the second run did not say %q:\n%s", want, second)
		}
	}
	if strings.Contains(second, "installing") || strings.Contains(second, "build start") {
		t.Fatalf("the second run installed or built something:\n%s", second)
	}
	run("stop")
}
