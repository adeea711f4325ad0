package spawnd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

func testConfig(t *testing.T) Config {
	t.Helper()
	return Config{
		Instance:  "unit",
		HomesRoot: t.TempDir(),
		Envs: map[string]EnvConfig{
			"team":  {Image: "img:1", LockDigest: "sha256:lock1", User: EnvUser{Name: "jovyan", UID: testUID(), GID: 100}},
			"other": {Image: "img:missing"},
		},
		ReapGrace: time.Hour,
		Teams: map[string]TeamConfig{
			"staff": {Groups: []string{"staff"}, Envs: []string{"other"}},
		},
	}
}

// newTestManager returns a running manager on a fake engine; the readiness
// probe always succeeds.
func newTestManager(t *testing.T, cfg Config, rt *fakebackend.Runtime, opts ...Option) *Manager {
	t.Helper()
	return newTestManagerWith(t, cfg, rt, nil, func(context.Context, string) error { return nil }, opts...)
}

// refuse is a Dial for servers that never open their port.
func refuse(context.Context, string) error { return errors.New("connection refused") }

// newTestManagerWith runs a manager with a logger and a Dial of the test's,
// until the test ends.
func newTestManagerWith(t *testing.T, cfg Config, rt *fakebackend.Runtime, log *slog.Logger, dial func(context.Context, string) error, opts ...Option) *Manager {
	t.Helper()
	m, err := NewManager(cfg, backend.Set{Name: "fake", Runtime: rt}, log, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	m.Dial = dial
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; m.Close() })
	select {
	case <-m.Synced():
	case <-time.After(5 * time.Second):
		t.Fatal("manager did not sync")
	}
	return m
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartIsIdempotent(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	ctx := context.Background()
	s1, err := m.Start(ctx, "alice", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s1.State != StateRunning || s1.Host != "127.0.0.1" || s1.Port == 0 || s1.Env != "team" || s1.LockDigest != "sha256:lock1" {
		t.Fatalf("unexpected first start: %+v", s1)
	}
	s2, err := m.Start(ctx, "alice", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.ContainerID != s1.ContainerID || rt.Runs.Load() != 1 {
		t.Fatalf("second start made a new container: %s vs %s, %d creates", s2.ContainerID, s1.ContainerID, rt.Runs.Load())
	}
}

func TestConcurrentStartsShareOneContainer(t *testing.T) {
	rt := fakebackend.New()
	gate, entered := make(chan struct{}), make(chan struct{})
	var enterOnce sync.Once
	rt.BeforeRun = func() { enterOnce.Do(func() { close(entered) }); <-gate }
	m := newTestManager(t, testConfig(t), rt)
	const n = 50
	var wg sync.WaitGroup
	var calling atomic.Int32
	ids := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			calling.Add(1)
			s, err := m.Start(context.Background(), "bob", "lab", StartRequest{})
			ids[i], errs[i] = s.ContainerID, err
		}()
	}
	// The create is held, and every caller has called Start: those that
	// reached the manager joined the start in flight, any still on their
	// way find it running; either way one container.
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no start reached the engine's create")
	}
	eventually(t, "every caller to call Start", func() bool { return calling.Load() == n })
	close(gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("start %d: id %q err %v; want %q", i, ids[i], errs[i], ids[0])
		}
	}
	if got := rt.Runs.Load(); got != 1 {
		t.Fatalf("%d concurrent starts created %d containers, want 1", n, got)
	}
}

func TestBadStartChangesNothing(t *testing.T) {
	cases := []struct {
		name   string
		user   string
		server string
		req    StartRequest
		kind   error
	}{
		{"unknown env", "alice", "", StartRequest{Env: "nope"}, ErrInvalid},
		{"unknown profile", "alice", "", StartRequest{Profile: "huge"}, ErrInvalid},
		{"empty user", "", "", StartRequest{}, ErrInvalid},
		{"NUL in user", "al\x00ice", "", StartRequest{}, ErrInvalid},
		{"newline in user", "al\nice", "", StartRequest{}, ErrInvalid},
		{"user too long", string(make([]byte, 256)), "", StartRequest{}, ErrInvalid},
		{"control in server", "alice", "a\x1b", StartRequest{}, ErrInvalid},
		{"bad env var name", "alice", "", StartRequest{Environment: map[string]string{"A-B": "x"}}, ErrInvalid},
		{"NUL in env value", "alice", "", StartRequest{Environment: map[string]string{"A": "x\x00"}}, ErrInvalid},
		{"NUL in cmd", "alice", "", StartRequest{Cmd: []string{"a\x00"}}, ErrInvalid},
		{"image missing", "alice", "", StartRequest{Env: "other", Groups: []string{"staff"}}, ErrConflict},
		{"env not for this user", "alice", "", StartRequest{Env: "other"}, ErrForbidden},
		{"bad group", "alice", "", StartRequest{Groups: []string{"a\x00"}}, ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := fakebackend.New()
			cfg := testConfig(t)
			m := newTestManager(t, cfg, rt)
			_, err := m.Start(context.Background(), tc.user, tc.server, tc.req)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("error %v, want kind %v", err, tc.kind)
			}
			if Message(err) == "" {
				t.Fatal("error without a message")
			}
			if rt.Runs.Load() != 0 || rt.Count() != 0 {
				t.Fatalf("a bad start touched the engine: %d creates", rt.Runs.Load())
			}
			entries, _ := os.ReadDir(cfg.HomesRoot)
			if len(entries) != 0 {
				t.Fatalf("a bad start made a home: %v", entries)
			}
		})
	}
}

func TestStopRemovesContainerKeepsHome(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	m := newTestManager(t, cfg, rt)
	ctx := context.Background()
	user := "Alice.Smith@example.org"
	if _, err := m.Start(ctx, user, "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(cfg.HomesRoot, Escape(user))
	fi, err := os.Stat(home)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("home mode %v, want 0700", fi.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(home, "work.ipynb"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Stop(ctx, user, ""); err != nil {
		t.Fatal(err)
	}
	if rt.Count() != 0 {
		t.Fatal("stop left the container")
	}
	if _, err := m.Status(user, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("status after stop: %v, want not_found", err)
	}
	if b, err := os.ReadFile(filepath.Join(home, "work.ipynb")); err != nil || string(b) != "data" {
		t.Fatalf("home lost after stop: %q %v", b, err)
	}
	if _, err := m.Stop(ctx, user, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second stop: %v, want not_found", err)
	}
}

func TestDeleteHomeRefusedWhileServerExists(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	m := newTestManager(t, cfg, rt)
	ctx := context.Background()
	if _, err := m.Start(ctx, "carol", "named", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteHome(ctx, "carol"); !errors.Is(err, ErrConflict) {
		t.Fatalf("delete while running: %v, want conflict", err)
	}
	if ok, _ := m.homes.(hostHomes).h.Exists("carol"); !ok {
		t.Fatal("home gone after a refused delete")
	}
	if _, err := m.Stop(ctx, "carol", "named"); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteHome(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := m.homes.(hostHomes).h.Exists("carol"); ok {
		t.Fatal("home still there after delete")
	}
	if err := m.DeleteHome(ctx, "carol"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want not_found", err)
	}
}

func TestExitReportedFromEvents(t *testing.T) {
	cases := []struct {
		name   string
		code   int
		oom    bool
		state  State
		reason string
	}{
		{"clean exit", 0, false, StateStopped, "exited"},
		{"crash", 3, false, StateFailed, "exited with code 3"},
		{"oom", 137, true, StateFailed, "oom_killed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := fakebackend.New()
			m := newTestManager(t, testConfig(t), rt)
			const secret = "s3cret-hub-token-value"
			s, err := m.Start(context.Background(), "dave", "", StartRequest{Environment: map[string]string{"JUPYTERHUB_API_TOKEN": secret}})
			if err != nil {
				t.Fatal(err)
			}
			rt.Log(s.ContainerID, "kernel started", "token "+secret, "MemoryError: the reason it died")
			rt.Exit(s.ContainerID, tc.code, tc.oom)
			failed := tc.state == StateFailed
			eventually(t, "the exit to be seen", func() bool {
				st, _ := m.Status("dave", "")
				return st.State != StateRunning && (!failed || st.LogTail != "")
			})
			st, _ := m.Status("dave", "")
			if st.State != tc.state || st.Reason != tc.reason || st.ExitCode == nil || *st.ExitCode != tc.code {
				t.Fatalf("got %s %q %v, want %s %q %d", st.State, st.Reason, st.ExitCode, tc.state, tc.reason, tc.code)
			}
			// A failure nobody asked for carries the end of its log, secrets
			// replaced, in its status.
			if failed != strings.Contains(st.LogTail, "the reason it died") || strings.Contains(st.LogTail, secret) {
				t.Errorf("log tail %q (failed: %v)", st.LogTail, failed)
			}
			// A start after an exit replaces the container with a new one.
			s2, err := m.Start(context.Background(), "dave", "", StartRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if s2.ContainerID == s.ContainerID || s2.State != StateRunning || rt.Count() != 1 {
				t.Fatalf("restart after exit: %+v, %d containers", s2, rt.Count())
			}
		})
	}
}

// TestProbeTimeoutFails: an adopted server that never opens its port is
// marked failed when its probe times out, so a WaitReady or the hub's poll
// ends instead of waiting for ever.
func TestProbeTimeoutFails(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	cfg.StartTimeout = 300 * time.Millisecond
	rt.Add(backend.Container{ID: "mute", Name: "a", State: backend.Running, HostPort: 41001,
		Labels: map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "mia", labels.Server: "",
			labels.Env: "team", labels.LockDigest: "sha256:old", labels.Port: "8888"}, Port: 8888})
	m := newTestManagerWith(t, cfg, rt, nil, refuse)
	eventually(t, "the mute server to be marked failed", func() bool {
		s, _ := m.Status("mia", "")
		return s.State == StateFailed
	})
	s, _ := m.Status("mia", "")
	if s.Ready || !strings.Contains(s.Reason, "did not listen") {
		t.Fatalf("the mute server: %+v", s)
	}
}

func TestAdoptsContainersOnStartup(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	lbl := func(user, server, inst string) map[string]string {
		return map[string]string{labels.Managed: "true", labels.Instance: inst, labels.User: user, labels.Server: server,
			labels.Env: "team", labels.LockDigest: "sha256:old", labels.Port: "8888"}
	}
	started := time.Now().Add(-time.Hour).Truncate(time.Second)
	rt.Add(backend.Container{ID: "run1", Name: "a", Labels: lbl("erin", "", "unit"), State: backend.Running, Port: 8888, StartedAt: started, HostPort: 41000})
	rt.Add(backend.Container{ID: "exit1", Name: "b", Labels: lbl("frank", "x", "unit"), State: backend.Exited, ExitCode: 2})
	rt.Add(backend.Container{ID: "other", Name: "c", Labels: lbl("gina", "", "otherinstance"), State: backend.Running})
	rt.Add(backend.Container{ID: "plain", Name: "d", State: backend.Created, Created: time.Now().Add(-time.Hour)})
	m := newTestManager(t, cfg, rt)

	// The first answers come from the listing; inspects fill in the rest.
	s, err := m.Status("erin", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != StateRunning || s.Port != 41000 || !s.Outdated {
		t.Fatalf("adopted server: %+v", s)
	}
	eventually(t, "inspects to complete the listing", func() bool {
		s, _ := m.Status("erin", "")
		f, _ := m.Status("frank", "x")
		return s.StartedAt.Equal(started) && f.ExitCode != nil
	})
	f, _ := m.Status("frank", "x")
	if f.State != StateFailed || f.ExitCode == nil || *f.ExitCode != 2 {
		t.Fatalf("adopted exited server: %+v", f)
	}
	if _, err := m.Status("gina", ""); !errors.Is(err, ErrNotFound) {
		t.Fatal("adopted another instance's container")
	}
	if n := m.Reap(context.Background()); n != 0 {
		t.Fatalf("reaped %d containers it did not label", n)
	}
	if rt.Count() != 4 {
		t.Fatal("a container was removed")
	}
}

func TestReaperRemovesOnlyOldHalfMadeContainers(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	cfg.ReapGrace = time.Minute
	l := map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "hank", labels.Server: ""}
	l2 := map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "ivy", labels.Server: ""}
	rt.Add(backend.Container{ID: "old", Labels: l, State: backend.Created, Created: time.Now().Add(-time.Hour)})
	rt.Add(backend.Container{ID: "young", Labels: l2, State: backend.Created, Created: time.Now()})
	m := newTestManager(t, cfg, rt)
	if n := m.Reap(context.Background()); n != 1 {
		t.Fatalf("reaped %d, want 1", n)
	}
	if _, err := rt.Inspect(context.Background(), "old"); !errdefs.IsNotFound(err) {
		t.Fatal("the old half-made container is still there")
	}
	if _, err := rt.Inspect(context.Background(), "young"); err != nil {
		t.Fatal("the young container was reaped")
	}
}

func TestForeignContainerWithOurNameIsAConflict(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	rt.Add(backend.Container{ID: "foreign", Name: ContainerName("unit", "judy", ""), State: backend.Running})
	m := newTestManager(t, cfg, rt)
	_, err := m.Start(context.Background(), "judy", "", StartRequest{})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("got %v, want conflict", err)
	}
	if _, err := rt.Inspect(context.Background(), "foreign"); err != nil {
		t.Fatal("spawnd removed a container it did not create")
	}
	st, _ := m.Status("judy", "")
	if st.State != StateFailed {
		t.Fatalf("state %s, want failed", st.State)
	}
}

func TestFailedStartLeavesNoContainer(t *testing.T) {
	rt := fakebackend.New()
	rt.RunErr = errors.New("runc: exec failed")
	m := newTestManager(t, testConfig(t), rt)
	_, err := m.Start(context.Background(), "kim", "", StartRequest{})
	if err == nil {
		t.Fatal("start succeeded")
	}
	if rt.Count() != 0 {
		t.Fatalf("a failed start left %d containers", rt.Count())
	}
	var events []ProgressEvent
	_ = m.Progress(context.Background(), "kim", "", func(ev ProgressEvent) error {
		events = append(events, ev)
		return nil
	})
	if len(events) == 0 || !events[len(events)-1].Failed {
		t.Fatalf("progress does not end in failure: %+v", events)
	}
}

// TestUnplaceableReachesTheSpawnPage: a backend that can place a server on
// no machine says why, and that reason (not "the engine is not reachable")
// is the start's error and its last progress line; what the backend said
// while it waited is progress too.
func TestUnplaceableReachesTheSpawnPage(t *testing.T) {
	rt := fakebackend.New()
	rt.Waiting = "Waiting for a machine with room for the server"
	rt.RunErr = &backend.Unplaceable{Reason: "no node has 4096 MiB of memory free to reserve", Err: errdefs.ErrUnavailable}
	m := newTestManager(t, testConfig(t), rt)
	_, err := m.Start(context.Background(), "mona", "", StartRequest{})
	var se *Error
	if !errors.As(err, &se) || !errors.Is(err, ErrUnavailable) || !strings.Contains(se.Msg, "no node has 4096 MiB") {
		t.Fatalf("start: %#v; want unavailable with the backend's reason", err)
	}
	var events []ProgressEvent
	_ = m.Progress(context.Background(), "mona", "", func(ev ProgressEvent) error {
		events = append(events, ev)
		return nil
	})
	var placing bool
	for _, ev := range events {
		placing = placing || ev.Step == StepPlacing && ev.Message == rt.Waiting
	}
	last := events[len(events)-1]
	if !placing || !last.Failed || !strings.Contains(last.Message, "no node has 4096 MiB") {
		t.Fatalf("progress %+v; want the wait as a placing step and the reason last", events)
	}
}

func TestProgressInOrder(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	if _, err := m.Start(context.Background(), "leo", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	var steps []Step
	last := -1
	err := m.Progress(context.Background(), "leo", "", func(ev ProgressEvent) error {
		if ev.Progress < last {
			t.Errorf("progress went back from %d to %d", last, ev.Progress)
		}
		last = ev.Progress
		steps = append(steps, ev.Step)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Step{StepAccepted, StepImage, StepHome, StepCreated, StepStarted, StepListening}
	if len(steps) != len(want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	for i := range want {
		if steps[i] != want[i] {
			t.Fatalf("steps %v, want %v", steps, want)
		}
	}
}

func TestEngineLossAndReconcile(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	s, err := m.Start(context.Background(), "mia", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The container vanishes while the event stream is broken; the
	// reconcile after the reconnect must notice.
	rt.Vanish(s.ContainerID)
	rt.BreakEvents(errors.New("connection reset"))
	eventually(t, "the vanished server to be forgotten", func() bool {
		_, err := m.Status("mia", "")
		return errors.Is(err, ErrNotFound)
	})
	if !m.EngineUp() {
		eventually(t, "the engine to be up again", m.EngineUp)
	}
}

// testUID is a uid a home can be given: 1000 as root, else our own.
func testUID() int {
	if os.Getuid() == 0 {
		return 1000
	}
	return os.Getuid()
}

// laterMtime gives a rewritten file an mtime the watcher cannot have seen
// (a rewrite within the file system's timestamp granularity keeps the old).
func laterMtime(t *testing.T, path string) {
	t.Helper()
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
}

func writeTestLock(t *testing.T, spec string, pipVersion string) *envs.Lock {
	t.Helper()
	l := &envs.Lock{Env: "team", SpecChecksum: "sha256:x", Base: envs.Base{Ref: "b", Digest: "sha256:b"},
		Pip:  &envs.PipLock{Packages: []envs.PipPackage{{Name: "x", Version: pipVersion, SHA256: "s"}}},
		Cmd:  []string{"jupyterhub-singleuser"},
		User: envs.User{Name: "jovyan", UID: testUID(), GID: 100}}
	l.Seal()
	if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestEnvFromLockAndOutdated(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	spec := filepath.Join(t.TempDir(), "team.yaml")
	l1 := writeTestLock(t, spec, "1")
	rt.SetImage(l1.Tag(), "sha256:one")
	cfg.Envs = map[string]EnvConfig{"team": {Spec: spec}}
	cfg.Teams = nil
	m := newTestManager(t, cfg, rt)
	ctx := context.Background()
	s, err := m.Start(ctx, "olga", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Image != l1.Tag() || s.LockDigest != l1.Digest || s.Outdated {
		t.Fatalf("server from lock: %+v", s)
	}
	// spawnd lock writes a new lock: until its image exists, the previous
	// lock keeps serving (no start fails with "build it first"), and the
	// running server is not outdated.
	l2 := writeTestLock(t, spec, "2")
	laterMtime(t, envs.LockPath(spec))
	eventually(t, "the lock watcher to find the new lock waiting for its image", func() bool {
		m.envs.mu.RLock()
		defer m.envs.mu.RUnlock()
		return m.envs.waiting["team"] == l2.Digest
	})
	sw, err := m.Start(ctx, "waldo", "", StartRequest{})
	if err != nil {
		t.Fatalf("a start while the new lock has no image: %v", err)
	}
	if sw.Image != l1.Tag() {
		t.Fatalf("a start while the new lock has no image runs %s, want the previous %s", sw.Image, l1.Tag())
	}
	if st, _ := m.Status("olga", ""); st.Outdated {
		t.Fatal("a server is outdated by a lock that has no image yet")
	}
	// spawnd build makes the image: the env switches, the running servers
	// are outdated, a new one gets the new image without a daemon restart.
	rt.SetImage(l2.Tag(), "sha256:two")
	eventually(t, "the old server to be marked outdated (locks are looked at once a second)", func() bool {
		st, _ := m.Status("olga", "")
		return st.Outdated
	})
	s2, err := m.Start(ctx, "pete", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Image != l2.Tag() || s2.Outdated {
		t.Fatalf("new server: %+v", s2)
	}
}

// TestReloadedLockIsCheckedAsAtStartup: a lock rewritten under a running
// daemon (re-sealed, so its digest is fine) that would run servers as root,
// or as a user name the config refuses, is refused and logged, and the
// previous lock keeps serving.
func TestReloadedLockIsCheckedAsAtStartup(t *testing.T) {
	cases := []struct {
		name string
		user envs.User
		want string
	}{
		{"uid 0", envs.User{Name: "jovyan", UID: 0, GID: 0}, "user.uid"},
		{"bad user name", envs.User{Name: "../root", UID: 1000, GID: 100}, "user.name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := fakebackend.New()
			cfg := testConfig(t)
			spec := filepath.Join(t.TempDir(), "team.yaml")
			good := writeTestLock(t, spec, "1")
			rt.SetImage(good.Tag(), "sha256:one")
			cfg.Envs = map[string]EnvConfig{"team": {Spec: spec}}
			cfg.Teams = nil
			var logs lockedLog
			m := newTestManagerWith(t, cfg, rt, slog.New(slog.NewTextHandler(&logs, nil)), func(context.Context, string) error { return nil })

			bad := &envs.Lock{Env: "team", SpecChecksum: "sha256:x", Base: envs.Base{Ref: "b", Digest: "sha256:b"},
				Cmd: []string{"jupyterhub-singleuser"}, User: tc.user}
			bad.Seal()
			if err := envs.WriteLock(envs.LockPath(spec), bad); err != nil {
				t.Fatal(err)
			}
			laterMtime(t, envs.LockPath(spec))
			rt.SetImage(bad.Tag(), "sha256:bad")
			eventually(t, "the refused lock to be logged", func() bool {
				return strings.Contains(logs.String(), "new lock is refused") // locks are looked at once a second
			})
			if !strings.Contains(logs.String(), tc.want) {
				t.Fatalf("the log does not name %s:\n%s", tc.want, logs.String())
			}
			s, err := m.Start(context.Background(), "olga", "", StartRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if s.Image != good.Tag() || s.LockDigest != good.Digest {
				t.Fatalf("a start after a refused lock: %+v, want the previous lock %s", s, good.Tag())
			}
			if n := strings.Count(logs.String(), "new lock is refused"); n != 1 {
				t.Fatalf("the refusal was logged %d times, want once per change of the file", n)
			}
		})
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedLog) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func TestTeamsDecideEnvsProfilesAndSharedFolders(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	shared := t.TempDir()
	cfg.Profiles = map[string]ProfileConfig{"default": {}, "large": {Memory: "8g"}}
	cfg.Teams = map[string]TeamConfig{
		"physics": {Groups: []string{"physics", "phys-staff"}, Profiles: []string{"large"},
			Shared: []SharedFolder{{Source: shared, Target: "/home/jovyan/shared", ReadOnly: true}}},
	}
	m := newTestManager(t, cfg, rt)
	ctx := context.Background()

	if _, err := m.Start(ctx, "outsider", "", StartRequest{Profile: "large"}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a user in no team got the large profile: %v", err)
	}
	if o := m.Offer(nil); len(o.Profiles) != 1 || o.Profiles[0].Name != "default" || o.Network.Gateway != "172.31.0.1" {
		t.Fatalf("options for no groups: %+v", o)
	}
	if o := m.Offer([]string{"phys-staff"}); len(o.Profiles) != 2 {
		t.Fatalf("options for physics: %+v", o)
	}
	s, err := m.Start(ctx, "quinn", "", StartRequest{Profile: "large", Groups: []string{"physics"}})
	if err != nil {
		t.Fatal(err)
	}
	spec := rt.Spec(s.ContainerID)
	if len(spec.Mounts) != 2 || spec.Mounts[1] != (backend.Mount{Source: shared, Target: "/home/jovyan/shared", ReadOnly: true}) || spec.Memory != 8<<30 {
		t.Fatalf("team member's container: mounts %+v memory %d", spec.Mounts, spec.Memory)
	}
	s2, err := m.Start(ctx, "outsider", "", StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rt.Spec(s2.ContainerID).Mounts) != 1 {
		t.Fatal("a user in no team got a shared folder")
	}
}

// TestReaperSparesAContainerThatStarted: the view says "created", but an
// earlier daemon's last start request got the container running meanwhile.
func TestReaperSparesAContainerThatStarted(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	cfg.ReapGrace = time.Minute
	l := map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "late", labels.Server: "", labels.Port: "8888"}
	rt.Add(backend.Container{ID: "late1", Labels: l, State: backend.Created, Created: time.Now().Add(-time.Hour), Port: 8888})
	m := newTestManager(t, cfg, rt)
	rt.Update("late1", func(c *backend.Container) { c.State = backend.Running }) // no event reaches the view
	if n := m.Reap(context.Background()); n != 0 {
		t.Fatalf("reaped %d", n)
	}
	if _, err := rt.Inspect(context.Background(), "late1"); err != nil {
		t.Fatal("the reaper removed a running container")
	}
	if s, _ := m.Status("late", ""); s.State != StateRunning {
		t.Fatalf("status after the reaper looked: %+v", s)
	}
}

func TestStartReturnsOnceTheServerListens(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	var listening atomic.Bool
	m.Dial = func(context.Context, string) error {
		if listening.Load() {
			return nil
		}
		return errors.New("connection refused")
	}
	done := make(chan Server, 1)
	go func() {
		s, err := m.Start(context.Background(), "lena", "", StartRequest{})
		if err != nil {
			t.Error(err)
		}
		done <- s
	}()
	eventually(t, "the container to run", func() bool { return rt.Runs.Load() == 1 })
	select {
	case s := <-done:
		t.Fatalf("start returned before the server listened: %+v", s)
	case <-time.After(200 * time.Millisecond):
	}
	listening.Store(true)
	select {
	case s := <-done:
		if !s.Ready || s.State != StateRunning {
			t.Fatalf("start returned a server that is not ready: %+v", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("start did not return after the server listened")
	}
}

func TestStartFailsFastWithTheLogTailWhenTheServerExits(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	cfg.StartTimeout = time.Hour
	m := newTestManager(t, cfg, rt)
	m.Dial = func(context.Context, string) error { return errors.New("connection refused") }
	const token = "0123456789abcdef0123456789abcdef"
	rt.OnRunning = func(id string) {
		rt.Log(id, "booting", "using token "+token, "\x1b[31mImportError: no module named jupyterhub\x1b[0m")
		go rt.Exit(id, 3, false)
	}
	// start_timeout is an hour; the start's own context ends long before.
	// A start that waited for start_timeout instead of failing on the exit
	// would end with that context's error, not ErrServerFailed.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := m.Start(ctx, "mona", "", StartRequest{Environment: map[string]string{"JUPYTERHUB_API_TOKEN": token}})
	if err == nil {
		t.Fatal("a server that exited during its start was reported started")
	}
	if !errors.Is(err, ErrServerFailed) {
		t.Errorf("error %v, want kind %v", err, ErrServerFailed)
	}
	msg := Message(err)
	for _, want := range []string{"exited with code 3", "ImportError: no module named jupyterhub", "[redacted]"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, token) || strings.Contains(msg, "\x1b") {
		t.Errorf("message leaks the token or control characters: %q", msg)
	}
	s, err := m.Status("mona", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != StateFailed || s.ExitCode == nil || *s.ExitCode != 3 {
		t.Errorf("status after the failed start: %+v", s)
	}
	if n := rt.Count(); n != 0 {
		t.Errorf("%d container(s) left after a failed start", n)
	}
}

// TestStartSeesAnExitReportedBeforeTheEngineAnswered: a server that exits
// at once can have its "die" event handled before the engine's answer to
// the start arrives, while the start does not yet know the container's ID.
// The start still fails at once with the exit code (it once waited for
// start_timeout: CI saw it when the goroutine of the test above ran late).
func TestStartSeesAnExitReportedBeforeTheEngineAnswered(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	cfg.StartTimeout = time.Minute
	m := newTestManager(t, cfg, rt)
	m.Dial = func(context.Context, string) error { return errors.New("connection refused") }
	rt.OnRunning = func(id string) {
		rt.Log(id, "Traceback: boom")
		rt.Exit(id, 3, false)
	}
	// Hold the engine's answer until the event loop has handled the exit
	// and the start event after it: the order this test is about.
	rt.AfterRun = func(id string) {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			m.view.mu.Lock()
			_, seen := m.view.servers[key{"mona", ""}].ended[id]
			m.view.mu.Unlock()
			if seen && rt.PendingEvents() == 0 {
				time.Sleep(20 * time.Millisecond) // the last event's inspect
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Error("the event loop never handled the exit")
	}
	_, err := m.Start(context.Background(), "mona", "", StartRequest{})
	if err == nil {
		t.Fatal("a server that exited during its start was reported started")
	}
	if msg := Message(err); !strings.Contains(msg, "exited with code 3") || !strings.Contains(msg, "Traceback: boom") {
		t.Fatalf("message %q lacks the exit code or the log tail", msg)
	}
	if s, err := m.Status("mona", ""); err != nil || s.State != StateFailed {
		t.Fatalf("status after the failed start: %+v, %v", s, err)
	}
}

func TestRedactTail(t *testing.T) {
	long := strings.Repeat("x", 2*logLineMax)
	var many strings.Builder
	for i := range 2 * logTailLines {
		fmt.Fprintf(&many, "line %d\n", i)
	}
	for _, tc := range []struct {
		name, in string
		secrets  []string
		want     string
	}{
		{"secret", "token=s3cr3tvalue ok\n", []string{"s3cr3tvalue"}, "token=[redacted] ok"},
		{"longest secret first", "abcdef123456\n", secretValues([]string{"A_TOKEN=abcdef", "B_KEY=abcdef123456"}), "[redacted]"},
		{"control characters", "\x1b[1mbold\x1b[0m\tx\r\n", nil, "[1mbold[0m x"},
		{"long line", long + "\n", nil, long[:logLineMax] + "…"},
		{"last lines only", many.String(), nil, strings.TrimSpace(strings.Join(strings.Split(many.String(), "\n")[logTailLines:2*logTailLines], "\n"))},
		{"invalid utf-8", "a\xffb\n", nil, "a?b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redactTail(tc.in, tc.secrets); got != tc.want {
				t.Errorf("redactTail(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// Before its first sync the daemon does not know which servers exist: every
// read or change answers "unavailable" (503), never "not found", so a hub
// never forgets a running server because the daemon just restarted.
func TestUnavailableUntilFirstSync(t *testing.T) {
	m, err := NewManager(testConfig(t), backend.Set{Runtime: fakebackend.New()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	for name, call := range map[string]func() error{
		"status":   func() error { _, err := m.Status("ann", ""); return err },
		"list":     func() error { _, err := m.List(); return err },
		"stop":     func() error { _, err := m.Stop(ctx, "ann", ""); return err },
		"start":    func() error { _, err := m.Start(ctx, "ann", "", StartRequest{}); return err },
		"progress": func() error { return m.Progress(ctx, "ann", "", func(ProgressEvent) error { return nil }) },
		"home":     func() error { return m.DeleteHome(ctx, "ann") },
	} {
		if err := call(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s before the first sync: %v, want code %q", name, err, ErrUnavailable)
		}
	}
}

func TestStartWithAnotherHubTokenReplacesTheContainer(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	ctx := context.Background()
	withToken := func(tok string) StartRequest {
		return StartRequest{Environment: map[string]string{"JUPYTERHUB_API_TOKEN": tok}}
	}
	s1, err := m.Start(ctx, "nina", "", withToken("token-one-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := m.Start(ctx, "nina", "", withToken("token-one-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	if s2.ContainerID != s1.ContainerID {
		t.Fatalf("the same token started a new container: %s then %s", s1.ContainerID, s2.ContainerID)
	}
	if got := rt.Spec(s1.ContainerID).Labels[labels.HubToken]; got != hubTokenHash(map[string]string{"JUPYTERHUB_API_TOKEN": "token-one-0123456789"}) || strings.Contains(got, "token-one") {
		t.Fatalf("token label %q", got)
	}
	s3, err := m.Start(ctx, "nina", "", withToken("token-two-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	if s3.ContainerID == s1.ContainerID {
		t.Fatal("a start with a new hub token got the container that holds the old one")
	}
	if n := rt.Count(); n != 1 {
		t.Fatalf("%d containers after the replacement, want 1", n)
	}
}

// The engine's start event can reach the daemon before the start itself
// reports "started"; the readiness probe must still come after it, or the
// spawn page would see "listening" first and the progress log would close
// before "started".
func TestListeningNeverPrecedesStarted(t *testing.T) {
	rt := fakebackend.New()
	m := newTestManager(t, testConfig(t), rt)
	// The fake sends the start event before Run returns; give the daemon
	// time to act on it before the start goes on.
	rt.AfterRun = func(string) { time.Sleep(20 * time.Millisecond) }
	for i := range 10 {
		user := fmt.Sprintf("order%02d", i)
		if _, err := m.Start(context.Background(), user, "", StartRequest{}); err != nil {
			t.Fatal(err)
		}
		var steps []Step
		if err := m.Progress(context.Background(), user, "", func(ev ProgressEvent) error {
			steps = append(steps, ev.Step)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(steps), "[accepted image home created started listening]"; got != want {
			t.Fatalf("start %d: steps %s, want %s", i, got, want)
		}
	}
}

// A start that finds its server running but not yet listening (adopted after
// a daemon restart, same hub token) waits for it rather than making another;
// when the wait ends unready, the server's log tail reaches the hub with the
// hub's token redacted, as on a fresh start.
func TestJoinedBootFailureIsRedacted(t *testing.T) {
	rt := fakebackend.New()
	const token = "fedcba9876543210fedcba9876543210"
	env := map[string]string{"JUPYTERHUB_API_TOKEN": token}
	rt.Add(backend.Container{ID: "boot1", Name: "boot", State: backend.Running, StartedAt: time.Now(), HostPort: 41001,
		Labels: map[string]string{labels.Managed: "true", labels.Instance: "unit", labels.User: "olga", labels.Server: "",
			labels.Env: "team", labels.LockDigest: "sha256:lock1", labels.Port: "8888", labels.HubToken: hubTokenHash(env)}, Port: 8888})
	rt.Log("boot1", "token "+token+" refused")
	cfg := testConfig(t)
	cfg.StartTimeout = 300 * time.Millisecond // the server never listens: the wait ends here
	m := newTestManagerWith(t, cfg, rt, nil, refuse)

	_, err := m.Start(context.Background(), "olga", "", StartRequest{Environment: env})
	if !errors.Is(err, ErrServerFailed) {
		t.Fatalf("joined boot that never listened: %v", err)
	}
	if msg := Message(err); strings.Contains(msg, token) || !strings.Contains(msg, "token [redacted] refused") {
		t.Fatalf("message %q", msg)
	}
	if n := rt.Runs.Load(); n != 0 {
		t.Fatalf("the same token made %d new container(s); it must wait on the running one", n)
	}
}

// TestHostDetailsStayInTheLog: a home that cannot be made fails the start
// with a message for the person (no host path), and the daemon's log holds
// the path and the fix.
func TestHostDetailsStayInTheLog(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string)
		kind  error
	}{
		{"homes_root missing", func(t *testing.T, root string) { _ = os.Remove(root) }, nil},
		{"homes_root writable by others", func(t *testing.T, root string) { _ = os.Chmod(root, 0o777) }, nil},
		{"home is a symlink", func(t *testing.T, root string) { _ = os.Symlink("/etc", filepath.Join(root, Escape("zoe"))) }, ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			root := filepath.Join(t.TempDir(), "homes-secret-path")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg.HomesRoot = root
			tc.setup(t, root)
			var logBuf lockedLog
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			m := newTestManagerWith(t, cfg, fakebackend.New(), log, func(context.Context, string) error { return nil })
			_, err := m.Start(context.Background(), "zoe", "", StartRequest{})
			if err == nil {
				t.Fatal("the start succeeded")
			}
			if KindOf(err) != tc.kind {
				t.Errorf("kind %v, want %v (%v)", KindOf(err), tc.kind, err)
			}
			if msg := Message(err); strings.Contains(msg, "homes-secret-path") || msg == "" {
				t.Errorf("the caller's message %q names the host path", msg)
			}
			if logged := logBuf.String(); !strings.Contains(logged, "homes-secret-path") {
				t.Errorf("the log does not name the host path:\n%s", logged)
			}
		})
	}
}

// pinnedHomes is a HomeStore whose homes live on "nodes" (a map), for the
// core's side of node-pinned homes: placement from the store, moves
// refused while a server exists, a start refused while a move runs.
type pinnedHomes struct {
	mu      sync.Mutex
	node    map[string]string // user -> node
	moving  chan struct{}     // closed to let a Move finish
	entered chan struct{}     // closed when a Move began
}

func (p *pinnedHomes) Ensure(_ context.Context, h backend.HomeSpec) (backend.Home, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.node[h.User] == "" {
		p.node[h.User] = "node-a"
	}
	return backend.Home{Source: "/homes/" + h.Dir, Placement: []string{"node.id==" + p.node[h.User]}}, nil
}

func (p *pinnedHomes) Delete(_ context.Context, h backend.HomeSpec) error { return nil }

func (p *pinnedHomes) Move(_ context.Context, h backend.HomeSpec, node string) (backend.HomeMove, error) {
	close(p.entered)
	<-p.moving
	p.mu.Lock()
	defer p.mu.Unlock()
	from := p.node[h.User]
	p.node[h.User] = node
	return backend.HomeMove{From: from, To: node}, nil
}

func TestMoveHome(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	ctx := context.Background()

	plain := newTestManager(t, cfg, rt)
	if _, err := plain.MoveHome(ctx, "dan", "node-b"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "not pinned to nodes") {
		t.Fatalf("a move where homes are shared: %v; want a conflict that says why", err)
	}

	frt := fakebackend.New()
	store := &pinnedHomes{node: map[string]string{}, moving: make(chan struct{}), entered: make(chan struct{})}
	m := newTestManager(t, testConfig(t), frt, WithHomes(store))
	if _, err := m.Start(ctx, "dan", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	srv, err := m.Status("dan", "")
	if err != nil {
		t.Fatal(err)
	}
	if p := frt.Spec(srv.ContainerID).Placement; !slices.Contains(p, "node.id==node-a") {
		t.Fatalf("the server's placement %v lacks its home's node", p)
	}
	if _, err := m.MoveHome(ctx, "dan", "node-b"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "stop it") {
		t.Fatalf("a move while the server runs: %v; want a conflict", err)
	}
	if _, err := m.Stop(ctx, "dan", ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		mv, err := m.MoveHome(ctx, "dan", "node-b")
		if err == nil && (mv.From != "node-a" || mv.To != "node-b") {
			err = fmt.Errorf("moved %+v", mv)
		}
		done <- err
	}()
	<-store.entered
	if _, err := m.Start(ctx, "dan", "", StartRequest{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "being moved") {
		t.Fatalf("a start during the move: %v; want a conflict", err)
	}
	close(store.moving)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, "dan", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	srv, _ = m.Status("dan", "")
	if p := frt.Spec(srv.ContainerID).Placement; !slices.Contains(p, "node.id==node-b") {
		t.Fatalf("after the move the server's placement is %v; want node-b's", p)
	}
}

// TestMissingCapabilitiesAnswer: a backend that declares no LogFollower,
// no Puller and no node-pinned homes gets an answer that says so for each,
// never a different path: a follow is refused naming --follow, a start of
// an image that is not there names where to put it, a home move says
// homes are not pinned.
func TestMissingCapabilitiesAnswer(t *testing.T) {
	rt := fakebackend.New()
	cfg := testConfig(t)
	e := cfg.Envs["other"]
	e.Pull = PullIfNotPresent
	cfg.Envs["other"] = e
	m := newTestManager(t, cfg, rt) // backend.Set{Runtime: rt}: nothing else declared
	ctx := context.Background()
	if _, err := m.Start(ctx, "ann", "", StartRequest{}); err != nil {
		t.Fatal(err)
	}
	err := m.FollowLogs(ctx, "ann", "", 10, io.Discard)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cannot follow a log; leave out --follow") {
		t.Fatalf("follow without a LogFollower: %v", err)
	}
	_, err = m.Start(ctx, "bob", "", StartRequest{Env: "other", Groups: []string{"staff"}})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "is not where this engine runs it from") {
		t.Fatalf("a start of a missing image without a Puller: %v", err)
	}
	if _, err := m.MoveHome(ctx, "ann", "node-b"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "not pinned to nodes") {
		t.Fatalf("a move without node-pinned homes: %v", err)
	}
}
