package doctor_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/doctor"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestRealEngineDown points doctor at a socket where no engine listens.
func TestRealEngineDown(t *testing.T) {
	eng, err := docker.New("unix://" + filepath.Join(t.TempDir(), "no-engine.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	rs := doctor.Run(context.Background(), doctor.Input{Engine: eng, Token: "0123456789abcdef"})
	if rs[1].Check != "engine" || rs[1].Status != doctor.Fail || rs[1].Fix == "" {
		t.Fatalf("engine down: %+v", rs)
	}
}

// TestRealEngineUp reads the real engine's version, runc and live-restore.
func TestRealEngineUp(t *testing.T) {
	eng := testenv.Engine(t)
	rs := doctor.Run(context.Background(), doctor.Input{Engine: eng, Token: "0123456789abcdef"})
	seen := map[string]doctor.Status{}
	for _, r := range rs {
		seen[r.Check] = r.Status
	}
	if seen["engine"] != doctor.OK || seen["runc"] == "" || seen["live-restore"] == "" {
		t.Fatalf("real engine: %+v", rs)
	}
}

// TestRealEngineHasNoGPUs: this machine's engine has no NVIDIA runtime, so
// a GPU profile is a failure doctor names, with the fix.
func TestRealEngineHasNoGPUs(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := &spawnd.Config{HomesRoot: t.TempDir(), Profiles: map[string]spawnd.ProfileConfig{"ml": {GPUs: "all"}}}
	for _, r := range doctor.Run(context.Background(), doctor.Input{Engine: eng, Config: cfg, Token: "0123456789abcdef"}) {
		if r.Check == "gpus" {
			if r.Status != doctor.Fail || !strings.Contains(r.Detail, "no NVIDIA runtime") || !strings.Contains(r.Fix, "NVIDIA Container Toolkit") {
				t.Fatalf("gpus on an engine without the NVIDIA runtime: %+v", r)
			}
			return
		}
	}
	t.Fatal("doctor ran no gpus check")
}
