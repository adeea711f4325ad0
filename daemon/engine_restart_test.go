package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestEngineRestart restarts the Docker engine (a private dockerd the test
// owns) under a running daemon: the daemon reports the engine down, then
// reconnects by itself and reports the truth, and the next start works.
func TestEngineRestart(t *testing.T) {
	main := testenv.Engine(t)
	img := testenv.EnsureBusybox(t, main)
	own := testenv.StartOwnEngine(t)
	own.LoadImage(t, main, img)
	eng, err := docker.New(own.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()

	cfg := testConfig(t, main)
	cfg.Engine.Host = own.Host
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	s, err := h.client.Start(ctx, "alice", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s, err = h.client.WaitReady(ctx, "alice", ""); err != nil || !s.Ready {
		t.Fatalf("not ready: %+v %v", s, err)
	}

	if err := os.WriteFile(filepath.Join(cfg.HomesRoot, spawnd.Escape("alice"), "notes.txt"), []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	homesBefore := testenv.TreeSum(t, cfg.HomesRoot)

	// Without live-restore, stopping dockerd stops the containers.
	own.Stop()
	waitEngine(t, h, "down")
	own.Start(true)
	waitEngine(t, h, "up")
	st := waitState(t, h, "alice", "", api.StateStopped, api.StateFailed)
	c, err := eng.Inspect(ctx, s.ContainerID)
	if err != nil || c.State == "running" {
		t.Fatalf("the engine says %+v (%v), the daemon %+v", c, err, st)
	}
	t.Logf("after the engine restart: %s (%s)", st.State, st.Reason)

	// The next start works: a new container.
	s2, err := h.client.Start(ctx, "alice", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s2, err = h.client.WaitReady(ctx, "alice", ""); err != nil || !s2.Ready || s2.ContainerID == s.ContainerID {
		t.Fatalf("start after the engine restart: %+v %v", s2, err)
	}

	// With live-restore, servers run through an engine restart untouched.
	before, _ := eng.Inspect(ctx, s2.ContainerID)
	own.Stop()
	waitEngine(t, h, "down")
	own.Start(true)
	waitEngine(t, h, "up")
	got := waitState(t, h, "alice", "", api.StateRunning)
	after, _ := eng.Inspect(ctx, s2.ContainerID)
	if got.ContainerID != s2.ContainerID || after.State != "running" || !after.StartedAt.Equal(before.StartedAt) {
		t.Fatalf("with live-restore: daemon %+v, engine %+v (started %s, before %s)", got, after.State, after.StartedAt, before.StartedAt)
	}
	if testenv.TreeSum(t, cfg.HomesRoot) != homesBefore {
		t.Fatal("homes changed across the engine restarts")
	}
}

func waitEngine(t *testing.T, h *harness, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		hl, err := h.client.Health(context.Background())
		if err == nil && hl.Engine == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health never said engine %s: %+v %v", want, hl, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
