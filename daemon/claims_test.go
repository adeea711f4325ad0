package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// engineContainers is the engine's own listing of an instance's containers
// (running or not), never the daemon's in-memory view.
func engineContainers(t *testing.T, h *harness) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := client.Filters{}
	f.Add("label", "io.spawnd.instance="+h.cfg.Instance)
	res, err := testenv.Client(h.eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range res.Items {
		names = append(names, strings.Join(c.Names, ","))
	}
	return names
}

// TestSecurityClaimsOnTheEngine backs the SECURITY.md claims that the unit
// tests show on a fake, against a real daemon on the real engine, each
// checked in the engine's own listing.
func TestSecurityClaimsOnTheEngine(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	img := cfg.Envs["team"].Image
	cfg.Envs["gpu"] = spawnd.EnvConfig{Image: img, LockDigest: "sha256:gpu", User: spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}}
	cfg.DefaultEnv = "team"
	cfg.Teams = map[string]spawnd.TeamConfig{"ml": {Groups: []string{"ml"}, Envs: []string{"gpu"}}}
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("groups decide envs", func(t *testing.T) {
		_, err := h.client.Start(ctx, "outsider", "", api.StartRequest{Env: "gpu", Groups: []string{"physics"}})
		if api.ErrorCode(err) != api.CodeForbidden {
			t.Fatalf("a user outside the ml team got the gpu env: %v", err)
		}
		if got := engineContainers(t, h); len(got) != 0 {
			t.Fatalf("a refused start left containers: %v", got)
		}
		s, err := h.client.Start(ctx, "member", "", api.StartRequest{Env: "gpu", Groups: []string{"ml"}})
		if err != nil || s.Env != "gpu" {
			t.Fatalf("an ml member's gpu start: %+v %v", s, err)
		}
		if _, err := h.client.Stop(ctx, "member", ""); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("limits on environment, command and groups", func(t *testing.T) {
		many := map[string]string{}
		for i := range 300 {
			many[fmt.Sprintf("V%d", i)] = "x"
		}
		groups := make([]string, 2000)
		for i := range groups {
			groups[i] = fmt.Sprintf("g%d", i)
		}
		for name, req := range map[string]api.StartRequest{
			"300 environment variables": {Environment: many},
			"a 300 KiB variable":        {Environment: map[string]string{"BIG": strings.Repeat("x", 300<<10)}},
			"a NUL in the command":      {Cmd: []string{"sh", "-c", "true\x00"}},
			"2,000 groups":              {Groups: groups},
		} {
			_, err := h.client.Start(ctx, "limits", "", req)
			if code := api.ErrorCode(err); code != api.CodeInvalid && code != api.CodeTooLarge {
				t.Errorf("%s: %v, want invalid or too large", name, err)
			}
		}
		if got := engineContainers(t, h); len(got) != 0 {
			t.Fatalf("refused starts left containers: %v", got)
		}
		if _, err := os.Stat(filepath.Join(cfg.HomesRoot, spawnd.Escape("limits"))); err == nil {
			t.Fatal("refused starts made a home")
		}
	})

	t.Run("a container with spawnd's name it did not make", func(t *testing.T) {
		name := spawnd.ContainerName(cfg.Instance, "judy", "")
		_, err := testenv.Client(eng).ContainerCreate(ctx, client.ContainerCreateOptions{
			Name:   name,
			Config: &container.Config{Image: img, Cmd: []string{"sleep", "60"}, Labels: map[string]string{"io.spawnd.test": "1"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = testenv.Client(eng).ContainerRemove(context.Background(), name, client.ContainerRemoveOptions{Force: true})
		})
		if _, err := h.client.Start(ctx, "judy", "", api.StartRequest{}); api.ErrorCode(err) != api.CodeConflict {
			t.Fatalf("start over a foreign container: %v, want conflict", err)
		}
		if _, err := testenv.Client(eng).ContainerInspect(ctx, name, client.ContainerInspectOptions{}); err != nil {
			t.Fatalf("spawnd removed a container it did not make: %v", err)
		}
	})

	t.Run("stop keeps the home; deleting a running user's home is refused", func(t *testing.T) {
		s, err := h.client.Start(ctx, "kate", "", api.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.WaitReady(ctx, "kate", ""); err != nil {
			t.Fatal(err)
		}
		work := filepath.Join(cfg.HomesRoot, spawnd.Escape("kate"), "work.txt")
		if err := os.WriteFile(work, []byte("kate's work\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := h.client.DeleteHome(ctx, "kate"); api.ErrorCode(err) != api.CodeConflict {
			t.Fatalf("deleting the home of a running user: %v, want conflict", err)
		}
		if res, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{}); err != nil || !res.Container.State.Running {
			t.Fatalf("the refused delete touched the container: %v", err)
		}
		if _, err := h.client.Stop(ctx, "kate", ""); err != nil {
			t.Fatal(err)
		}
		for _, n := range engineContainers(t, h) {
			if strings.Contains(n, spawnd.Escape("kate")) {
				t.Fatalf("stopped, but the engine still lists %s", n)
			}
		}
		if b, err := os.ReadFile(work); err != nil || string(b) != "kate's work\n" {
			t.Fatalf("the home after stop: %q %v", b, err)
		}
		// Stopped: now an admin may delete it, and only with confirmation.
		if err := h.client.DeleteHome(ctx, "kate"); err != nil {
			t.Fatalf("deleting a stopped user's home: %v", err)
		}
		if _, err := os.Stat(work); err == nil {
			t.Fatal("the home is still there after its delete")
		}
	})
}
