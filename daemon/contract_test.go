package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestAPIAgainstItsContract drives a live daemon on the real engine with
// schemathesis (from PyPI) from api/openapi.yaml, as a stranger to its code
// would: every response must match the spec, status codes included (so
// no 5xx but the documented ones: schemathesis' not_a_server_error would
// fail the documented 502 of a server that exits at once, which valid
// input can ask for with a command that fails), and input the spec calls
// invalid must be refused. First only invalid input (schemathesis' negative mode): the
// engine's listing and homes_root must be as they were. Then valid input:
// every container on the engine must be a server the daemon reports (no
// half-made container). The build and rollout endpoints are left out: a
// valid request there relocks and rebuilds an env against the package
// indexes, which the env tests do on their own; so are the logs endpoints,
// whose follow=1 streams until the container ends (schemathesis waits for
// a whole answer): TestLogsFollow and TestLogsRedacted test them, and
// TestBadLogsQueries (api/server) their refusals.
func TestAPIAgainstItsContract(t *testing.T) {
	st := testenv.Schemathesis(t)
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	homes := func() []string {
		entries, err := os.ReadDir(cfg.HomesRoot)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	run := func(mode string, budget time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), budget+2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, st, "run", "../api/openapi.yaml",
			"--url", "http://"+h.addr,
			"-H", "Authorization: Bearer "+cfg.Token,
			"--mode", mode,
			"--phases", "examples,coverage,fuzzing",
			"--checks", "status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection",
			"--exclude-path-regex", `^/v1/envs/\{env\}/(build|rollout)$|/logs$`,
			"--max-examples", "25",
			"--max-time", strconv.Itoa(int(budget.Seconds())),
			"--workers", "1",
			"--seed", "26",
			"--no-color",
			"--generation-database", "none",
			"--suppress-health-check", "all",
		)
		cmd.Env = append(os.Environ(), "SCHEMATHESIS_HOOKS=", "NO_COLOR=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("schemathesis (%s input) found the daemon off its contract: %v\n%s", mode, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Logf("schemathesis (%s input): %s", mode, strings.Join(lines[max(0, len(lines)-6):], "\n"))
	}

	beforeC, beforeH := ourContainers(t, h), homes()
	run("negative", 90*time.Second)
	if after := ourContainers(t, h); !slices.Equal(after, beforeC) {
		t.Errorf("invalid input changed the engine's containers: %v, before %v", after, beforeC)
	}
	if after := homes(); !slices.Equal(after, beforeH) {
		t.Errorf("invalid input changed homes_root: %v, before %v", after, beforeH)
	}

	run("positive", 90*time.Second)
	servers, err := h.client.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, s := range servers {
		known[s.ContainerID] = true
	}
	for _, id := range ourContainerIDs(t, h) {
		if !known[id] {
			t.Errorf("container %s is on the engine and not among the daemon's servers", id)
		}
	}
}
