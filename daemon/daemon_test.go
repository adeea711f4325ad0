package daemon_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// harness is one in-process daemon on the real engine.
type harness struct {
	t      *testing.T
	eng    *docker.Engine
	cfg    daemon.Config
	client *api.Client
	cancel context.CancelFunc
	done   chan error
	addr   string
	d      *daemon.Daemon
}

func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func testConfig(t *testing.T, eng *docker.Engine) daemon.Config {
	inst := testenv.Instance(t, eng)
	img := testenv.EnsureBusybox(t, eng)
	homes := t.TempDir()
	if err := os.Chmod(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	return daemon.Config{
		Listen: "127.0.0.1:0",
		Token:  token(),
		Config: spawnd.Config{
			Instance:  inst,
			HomesRoot: homes,
			Network:   spawnd.NetworkConfig{Name: "spawnd-" + inst},
			Envs: map[string]spawnd.EnvConfig{
				"team": {Image: img, LockDigest: "sha256:test", User: spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}},
			},
			Profiles: map[string]spawnd.ProfileConfig{
				"default": {Memory: "256m", CPUs: 1, Pids: 128},
			},
			StartTimeout: 30 * time.Second,
			StopGrace:    time.Second,
		},
	}
}

func startDaemon(t *testing.T, eng *docker.Engine, cfg daemon.Config) *harness {
	t.Helper()
	return startDaemonLogger(t, eng, cfg, slog.New(slog.DiscardHandler))
}

func startDaemonLogger(t *testing.T, eng *docker.Engine, cfg daemon.Config, log *slog.Logger) *harness {
	t.Helper()
	d, err := daemon.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, eng: eng, cfg: cfg, cancel: cancel, done: make(chan error, 1), addr: d.Addr().String(), d: d}
	go func() { h.done <- d.Run(ctx); d.Close() }()
	h.client, err = api.NewClient(d.Addr().String(), cfg.Token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if hl, err := h.client.Health(context.Background()); err == nil && hl.Engine == "up" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon not healthy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return h
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func httpGet(t *testing.T, s api.Server, path string) string {
	t.Helper()
	url := fmt.Sprintf("http://%s:%d/%s", s.Host, s.Port, path)
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

func TestStartWriteStopStartKeepsHome(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	user := "Alice.Smith@example.org"

	// The command records who it runs as, then serves $HOME over HTTP.
	probe := `id -u > $HOME/uid; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > $HOME/status; echo hello > $HOME/note; exec httpd -f -p 8888 -h $HOME`
	s, err := h.client.Start(ctx, user, "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", probe}, Environment: map[string]string{"SECRET_TOKEN": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.State != api.StateRunning || s.Host != "127.0.0.1" || s.Port == 0 || s.Env != "team" || s.ImageID == "" || s.StartedAt.IsZero() {
		t.Fatalf("start answer: %+v", s)
	}
	s, err = h.client.WaitReady(ctx, user, "")
	if err != nil || !s.Ready {
		t.Fatalf("not ready: %+v %v", s, err)
	}
	if got := httpGet(t, s, "note"); got != "hello\n" {
		t.Fatalf("note = %q", got)
	}
	if got := strings.TrimSpace(httpGet(t, s, "uid")); got != "1000" {
		t.Fatalf("container runs as uid %s, want 1000", got)
	}
	status := httpGet(t, s, "status")
	if !strings.Contains(status, "CapEff:\t0000000000000000") || !strings.Contains(status, "NoNewPrivs:\t1") {
		t.Fatalf("hardening missing:\n%s", status)
	}

	home := filepath.Join(cfg.HomesRoot, spawnd.Escape(user))
	fi, err := os.Stat(home)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("home mode %v", fi.Mode())
	}
	// Inspect the container the way an admin would.
	ins, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := ins.Container.HostConfig
	if hc.Privileged || len(hc.CapAdd) != 0 || hc.PidsLimit == nil || *hc.PidsLimit != 128 || hc.Memory != 256<<20 || hc.Init == nil || !*hc.Init {
		t.Fatalf("host config not hardened: privileged=%v capadd=%v pids=%v mem=%d init=%v", hc.Privileged, hc.CapAdd, hc.PidsLimit, hc.Memory, hc.Init)
	}
	if ins.Container.Config.Labels[labels.User] != user {
		t.Fatalf("labels: %v", ins.Container.Config.Labels)
	}

	if _, err := h.client.Stop(ctx, user, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{}); err == nil {
		t.Fatal("the container is still there after stop")
	}
	if b, err := os.ReadFile(filepath.Join(home, "note")); err != nil || string(b) != "hello\n" {
		t.Fatalf("home lost after stop: %q %v", b, err)
	}

	// Start again with the env's default command: the file is still there.
	s2, err := h.client.Start(ctx, user, "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.ContainerID == s.ContainerID {
		t.Fatal("start after stop reused the old container")
	}
	s2, err = h.client.WaitReady(ctx, user, "")
	if err != nil || !s2.Ready {
		t.Fatalf("not ready: %+v %v", s2, err)
	}
	if got := httpGet(t, s2, "note"); got != "hello\n" {
		t.Fatalf("note after restart = %q", got)
	}
}

func TestNamedServersAndConcurrentStarts(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()

	const n = 10
	var wg sync.WaitGroup
	ids := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := h.client.Start(ctx, "bob", "lab", api.StartRequest{})
			ids[i], errs[i] = s.ContainerID, err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("start %d: %q %v (want %q)", i, ids[i], errs[i], ids[0])
		}
	}
	// A second user and bob's default server run beside it.
	if _, err := h.client.Start(ctx, "bob", "", api.StartRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Start(ctx, "Bob", "", api.StartRequest{}); err != nil {
		t.Fatal(err)
	}
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+cfg.Instance)
	res, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 3 {
		t.Fatalf("%d containers, want 3", len(res.Items))
	}
	list, err := h.client.List(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %d %v", len(list), err)
	}
	homes, _ := os.ReadDir(cfg.HomesRoot)
	if len(homes) != 2 {
		t.Fatalf("%d homes for bob and Bob, want 2", len(homes))
	}
}

func TestProgressStream(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.client.Start(ctx, "carol", "", api.StartRequest{}); err != nil {
		t.Fatal(err)
	}
	var steps []string
	err := h.client.Progress(ctx, "carol", "", func(ev api.ProgressEvent) error {
		steps = append(steps, ev.Step)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "accepted,image,home,created,started,listening"
	if got := strings.Join(steps, ","); got != want {
		t.Fatalf("steps %s, want %s", got, want)
	}
}

// A server that exits before it listens fails its start at once (not after
// start_timeout), with its exit code and the last lines of its log, the
// hub's token replaced; nothing of it stays on the engine.
func TestExitAndOOMReported(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.StartTimeout = 5 * time.Minute // the failure must not wait for it
	cfg.Profiles["tiny"] = spawnd.ProfileConfig{Memory: "16m", Pids: 64}
	cfg.Teams = map[string]spawnd.TeamConfig{"tests": {Groups: []string{"testers"}, Profiles: []string{"tiny"}}}
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const secret = "hub-token-0123456789abcdef"
	boom := `echo booting; echo "my token is $JUPYTERHUB_API_TOKEN"; echo "ImportError: no module named jupyter_server" >&2; exit 7`
	_, err := h.client.Start(ctx, "dora", "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", boom},
		Environment: map[string]string{"JUPYTERHUB_API_TOKEN": secret}})
	if api.ErrorCode(err) != api.CodeServerFailed {
		t.Fatalf("start of a server that exits: %v, want code %s", err, api.CodeServerFailed)
	}
	msg := api.ErrorMessage(err)
	for _, want := range []string{"exited with code 7", "booting", "ImportError: no module named jupyter_server", "my token is [redacted]"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the failure lacks %q: %q", want, msg)
		}
	}
	if strings.Contains(msg, secret) {
		t.Errorf("the failure shows the hub's token: %q", msg)
	}
	s := waitState(t, h, "dora", "", api.StateFailed)
	if s.ExitCode == nil || *s.ExitCode != 7 || !strings.Contains(s.Reason, "exited with code 7") {
		t.Fatalf("status after the exit: %+v", s)
	}
	f := client.Filters{}
	f.Add("label", "io.spawnd.instance="+cfg.Instance)
	f.Add("label", "io.spawnd.user=dora")
	if res, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f}); err != nil || len(res.Items) != 0 {
		t.Fatalf("containers left after the failed start: %d %v", len(res.Items), err)
	}

	// Fill memory: a shell variable that doubles until the kernel kills it.
	hog := `x=0123456789abcdef; while true; do x="$x$x"; done`
	_, err = h.client.Start(ctx, "ed", "", api.StartRequest{Profile: "tiny", Groups: []string{"testers"}, Cmd: []string{"/bin/sh", "-c", hog}})
	if api.ErrorCode(err) != api.CodeServerFailed || !strings.Contains(api.ErrorMessage(err), "oom_killed") {
		t.Fatalf("start of a server killed for memory: %v", err)
	}
	s = waitState(t, h, "ed", "", api.StateFailed)
	if !strings.Contains(s.Reason, "oom_killed") || s.ExitCode == nil || *s.ExitCode != 137 {
		t.Fatalf("oom: %+v", s)
	}
}

func waitState(t *testing.T, h *harness, user, server string, want ...api.State) api.Server {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := h.client.Status(context.Background(), user, server)
		if err == nil && slices.Contains(want, s.State) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s: state %s (%v), want %v", user, server, s.State, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReaperAndForeignContainers(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.ReapGrace = 200 * time.Millisecond
	ctx := context.Background()
	cli := testenv.Client(eng)
	img := testenv.BusyboxImage
	// A half-made container of ours (created, never started) and one that is
	// not ours at all.
	ours := map[string]string{labels.Managed: "true", labels.Instance: cfg.Instance, labels.User: "fay", labels.Server: ""}
	halfMade, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: spawnd.ContainerName(cfg.Instance, "fay", ""), Image: img,
		Config: &container.Config{Labels: ours}})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: "spawnd-test-foreign-" + cfg.Instance, Image: img,
		Config: &container.Config{Labels: map[string]string{labels.Instance: cfg.Instance + "x", testenv.TestLabel: "1"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = cli.ContainerRemove(context.Background(), foreign.ID, client.ContainerRemoveOptions{Force: true})
	})

	startDaemon(t, eng, cfg)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := cli.ContainerInspect(ctx, halfMade.ID, client.ContainerInspectOptions{}); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the half-made container was not reaped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := cli.ContainerInspect(ctx, foreign.ID, client.ContainerInspectOptions{}); err != nil {
		t.Fatalf("the daemon touched a container it did not label: %v", err)
	}
}

// TestNetworkMode: with network.mode "network" (a hub in a container on the
// same network) nothing is published; status gives the container's address.
func TestNetworkMode(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.Network.Mode = "network"
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	s, err := h.client.Start(ctx, "nina", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s, err = h.client.WaitReady(ctx, "nina", ""); err != nil || !s.Ready {
		t.Fatalf("not ready: %+v %v", s, err)
	}
	if s.Host == "127.0.0.1" || s.Port != 8888 {
		t.Fatalf("network mode answer: %s:%d", s.Host, s.Port)
	}
	ins, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ins.Container.HostConfig.PortBindings) != 0 {
		t.Fatalf("network mode published ports: %v", ins.Container.HostConfig.PortBindings)
	}
	if err := os.WriteFile(filepath.Join(cfg.HomesRoot, spawnd.Escape("nina"), "hi"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := httpGet(t, s, "hi"); got != "hello\n" {
		t.Fatalf("GET %s:%d/hi = %q", s.Host, s.Port, got)
	}
}

// TestBuildThroughTheAPI: the daemon builds a spec-based env on request,
// streams the same events as `spawnd build`, and serves the new lock at once.
func TestBuildThroughTheAPI(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	cfg := testConfig(t, eng)
	env := "apibuild" + cfg.Instance
	spec := filepath.Join(t.TempDir(), env+".yaml")
	write := func(desc string) {
		body := fmt.Sprintf("name: %s\ndescription: %s\nbase: %s\n", env, desc, base)
		if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	t.Cleanup(func() { testenv.RemoveImages(eng, labels.Env, env) })
	ctx := context.Background()
	if _, err := images.Build(ctx, eng, spec, images.Options{}); err != nil {
		t.Fatal(err)
	}
	cfg.Envs[env] = spawnd.EnvConfig{Spec: spec}
	cfg.DefaultEnv = "team"
	h := startDaemon(t, eng, cfg)

	write("second") // the spec changed: a relock and a new image
	var evs []api.BuildEvent
	err := h.client.BuildEnv(ctx, env, true, func(ev api.BuildEvent) error { evs = append(evs, ev); return nil })
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if !last.Done || last.Error != "" || !last.Built || last.Tag == "" {
		t.Fatalf("last event: %+v", last)
	}
	steps := map[string]bool{}
	for _, ev := range evs {
		steps[ev.Phase+" "+strings.SplitN(ev.Step, " ", 2)[0]] = true
	}
	for _, want := range []string{"build accepted", "lock base", "build layer", "build result"} {
		if !steps[want] {
			t.Fatalf("no %q event in %+v", want, steps)
		}
	}
	l, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil || l.Tag() != last.Tag || l.Description != "second" {
		t.Fatalf("lock after the API build: %+v %v", l, err)
	}
	// A stale spec without relock: the build fails and says why, as the last event.
	write("third")
	evs = nil
	_ = h.client.BuildEnv(ctx, env, false, func(ev api.BuildEvent) error { evs = append(evs, ev); return nil })
	if last := evs[len(evs)-1]; !last.Done || !strings.Contains(last.Error, "spec checksum changed") {
		t.Fatalf("stale build: %+v", last)
	}
	// The failed build changed nothing: the previous lock still serves.
	if after, err := envs.ReadLock(envs.LockPath(spec)); err != nil || after.Digest != l.Digest {
		t.Fatalf("a failed build changed the lock: %+v %v", after, err)
	}
	if err := eng.CheckImage(ctx, l.Tag()); err != nil {
		t.Fatalf("a failed build removed the serving image %s: %v", l.Tag(), err)
	}
	if err := h.client.BuildEnv(ctx, "nope", false, func(api.BuildEvent) error { return nil }); api.ErrorCode(err) != api.CodeNotFound {
		t.Fatalf("unknown env: %v", err)
	}
	if err := h.client.BuildEnv(ctx, "team", false, func(api.BuildEvent) error { return nil }); api.ErrorCode(err) != api.CodeConflict {
		t.Fatalf("image env: %v", err)
	}
}
