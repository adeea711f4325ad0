package daemon_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
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

	// The daemon restarts while the engine is down: until its first sync it
	// answers 503 (unknown), never 404 (which would make a hub forget a
	// running server); once the engine is back it reports the server as it is.
	h.stop()
	own.Stop()
	d2, err := daemon.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d2.Run(dctx); d2.Close() }()
	stopD2 := sync.OnceFunc(func() { dcancel(); <-done })
	defer stopD2()
	c2, _ := api.NewClient(d2.Addr().String(), cfg.Token)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c2.Status(ctx, "alice", "")
		if api.ErrorCode(err) == api.CodeUnavailable {
			break
		}
		if err == nil || api.ErrorCode(err) == api.CodeNotFound || time.Now().After(deadline) {
			t.Fatalf("status while the engine is down after a daemon restart: %v, want 503 unavailable", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := c2.List(ctx); api.ErrorCode(err) != api.CodeUnavailable {
		t.Fatalf("list before the first sync: %v, want 503 unavailable", err)
	}
	own.Start(true)
	deadline = time.Now().Add(60 * time.Second)
	for {
		got, err := c2.Status(ctx, "alice", "")
		if err == nil && got.State == api.StateRunning && got.ContainerID == s2.ContainerID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the engine came back: %+v %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The engine restarts while a daemon is starting: the engine is stopped
	// at the moment the daemon begins its first sync, and started again. No
	// answer in between may say the server is gone (404), and afterwards
	// the daemon reports the same container, running.
	stopD2()
	d3, err := daemon.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d3ctx, d3cancel := context.WithCancel(context.Background())
	done3 := make(chan error, 1)
	stopped := make(chan struct{})
	go func() { own.Stop(); close(stopped) }()
	go func() { done3 <- d3.Run(d3ctx); d3.Close() }()
	defer func() { d3cancel(); <-done3 }()
	c3, _ := api.NewClient(d3.Addr().String(), cfg.Token)
	<-stopped
	own.Start(true)
	deadline = time.Now().Add(60 * time.Second)
	for {
		got, err := c3.Status(ctx, "alice", "")
		if api.ErrorCode(err) == api.CodeNotFound {
			t.Fatalf("a daemon starting across an engine restart said the server is gone: %v", err)
		}
		if err == nil && got.State == api.StateRunning && got.ContainerID == s2.ContainerID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a daemon started across an engine restart: %+v %v", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if list, err := c3.List(ctx); err != nil || len(list) != 1 {
		t.Fatalf("servers after starting across an engine restart: %+v %v", list, err)
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
