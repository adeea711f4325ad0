package daemon_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestReloadKeepsServers is systemctl reload on a running daemon: systemd
// hears READY=1 once it serves, RELOADING=1 and READY=1 around a reload; a
// reload puts new profiles and teams in place for the next start while a
// running server keeps its container; a config that does not load, or that
// changes a key only a restart can, changes nothing and says which key.
func TestReloadKeepsServers(t *testing.T) {
	eng := testenv.Engine(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	said := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		_ = ln.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := ln.Read(buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), want) {
			t.Fatalf("systemd heard %q (%v); want %q", buf[:n], err, want)
		}
	}

	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	said("READY=1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	listen := []string{"httpd", "-f", "-p", "8888", "-h", "/tmp"}
	ray, err := h.client.Start(ctx, "ray", "", api.StartRequest{Cmd: listen})
	if err != nil {
		t.Fatal(err)
	}
	bigReq := api.StartRequest{Profile: "big", Groups: []string{"ml"}, Cmd: listen}
	if _, err := h.client.Start(ctx, "sue", "", bigReq); api.ErrorCode(err) != api.CodeInvalid {
		t.Fatalf("a start with a profile not configured yet: %v; want invalid", err)
	}

	grown := cfg
	grown.Profiles = map[string]spawnd.ProfileConfig{"default": cfg.Profiles["default"], "big": {Memory: "512m", CPUs: 1, Pids: 128, ShmSize: "128m"}}
	grown.Teams = map[string]spawnd.TeamConfig{"ml": {Groups: []string{"ml"}, Profiles: []string{"big"}}}
	load := func(c daemon.Config) func() (daemon.Config, error) {
		return func() (daemon.Config, error) { return c, c.Validate() }
	}
	if err := h.d.Reload(load(grown)); err != nil {
		t.Fatal(err)
	}
	said("RELOADING=1")
	said("READY=1")
	if s, err := h.client.Start(ctx, "sue", "", bigReq); err != nil || s.Profile != "big" {
		t.Fatalf("a start with the reloaded profile: %+v %v", s, err)
	}
	if s, err := h.client.Status(ctx, "ray", ""); err != nil || s.State != api.StateRunning || s.ContainerID != ray.ContainerID {
		t.Fatalf("the server running before the reload: %+v %v; want it running in its container %s", s, err, ray.ContainerID)
	}

	broken := func() (daemon.Config, error) {
		return daemon.Config{}, errors.New("spawnd.yaml: line 3: did not find expected key")
	}
	moved := grown
	moved.HomesRoot = t.TempDir()
	moved.Profiles = map[string]spawnd.ProfileConfig{"default": cfg.Profiles["default"], "big": grown.Profiles["big"], "huge": {Memory: "1g", CPUs: 1, Pids: 128}}
	relisten := grown
	relisten.Listen = "127.0.0.1:1"
	reowned := grown
	reowned.HomeOwner, reowned.SlotsDir = spawnd.HomeOwnerSystem, t.TempDir()
	for _, tc := range []struct {
		name string
		load func() (daemon.Config, error)
		want string
	}{
		{"broken yaml", broken, "did not find expected key"},
		{"homes_root changed", load(moved), "homes_root changed, which takes a restart"},
		{"listen changed", load(relisten), "listen changed, which takes a restart"},
		{"home_owner changed", load(reowned), "home_owner, slots_dir changed, which takes a restart"},
	} {
		err := h.d.Reload(tc.load)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: reload %v; want an error with %q", tc.name, err, tc.want)
		}
		said("RELOADING=1")
		said("READY=1")
	}
	// Nothing of the refused configs took: "big" still serves, "huge" never came.
	if _, err := h.client.Start(ctx, "tom", "", bigReq); err != nil {
		t.Errorf("a start after refused reloads: %v", err)
	}
	if _, err := h.client.Start(ctx, "uma", "", api.StartRequest{Profile: "huge", Cmd: listen}); api.ErrorCode(err) != api.CodeInvalid {
		t.Errorf("a profile of a refused reload: %v; want invalid", err)
	}
}
