package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// buildBinary builds spawnd once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "spawnd")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building spawnd: %v", err)
	}
	return out
}

func freePort(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
}

// daemonProc is `spawnd serve` as a real process.
type daemonProc struct {
	cmd *exec.Cmd
}

func startProc(t *testing.T, bin, config, token string) *daemonProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Env = append(os.Environ(), "SPAWND_TOKEN="+token)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(config), "daemon.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{cmd: cmd}
	t.Cleanup(func() { p.kill(); logf.Close() })
	return p
}

func (p *daemonProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// procWorld is a spawnd process with its config, on the real engine.
type procWorld struct {
	bin, config, tok, homes string
	c                       *api.Client
	eng                     *docker.Engine
}

func newProcWorld(t *testing.T, extra string) *procWorld {
	t.Helper()
	eng := testenv.Engine(t)
	inst := testenv.Instance(t, eng)
	img := testenv.EnsureBusybox(t, eng)
	dir := t.TempDir()
	homes := filepath.Join(dir, "homes")
	if err := os.Mkdir(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	config := filepath.Join(dir, "spawnd.yaml")
	yaml := fmt.Sprintf(`listen: %s
instance: %s
homes_root: %s
network: {name: spawnd-%s}
envs:
  team:
    image: %s
    user: {name: jovyan, uid: 1000, gid: 100}
%s`, addr, inst, homes, inst, img, extra)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := newToken(t)
	c, err := api.NewClient(addr, tok)
	if err != nil {
		t.Fatal(err)
	}
	return &procWorld{bin: buildBinary(t), config: config, tok: tok, homes: homes, c: c, eng: eng}
}

func (w *procWorld) start(t *testing.T) *daemonProc { return startProc(t, w.bin, w.config, w.tok) }

// TestKill9KeepsServersAndRestartAdopts: servers keep running through ten
// kill -9 of the daemon in a row, none is restarted, lost or duplicated, and
// each new daemon's first answer already reports them all running.
func TestKill9KeepsServersAndRestartAdopts(t *testing.T) {
	w := newProcWorld(t, "")
	ctx := context.Background()
	p := w.start(t)
	waitAnswer(t, w.c)
	users := []string{"Alice.Smith@example.org", "bob", "carol"}
	started := map[string]string{} // container id -> StartedAt
	for _, u := range users {
		s, err := w.c.Start(ctx, u, "", api.StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if s, err = w.c.WaitReady(ctx, u, ""); err != nil || !s.Ready {
			t.Fatalf("not ready: %+v %v", s, err)
		}
		if err := os.WriteFile(filepath.Join(w.homes, spawnd.Escape(u), "work.txt"), []byte("work of "+u), 0o644); err != nil {
			t.Fatal(err)
		}
		started[s.ContainerID] = inspect(t, testenv.Client(w.eng), s.ContainerID).StartedAt
	}
	homesBefore := testenv.TreeSum(t, w.homes)

	var worst time.Duration
	for round := range 10 {
		p.kill()
		began := time.Now()
		p = w.start(t)
		first := waitAnswer(t, w.c)
		elapsed := time.Since(began)
		worst = max(worst, elapsed)
		list, err := w.c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if first != len(users) || len(list) != len(users) {
			t.Fatalf("round %d: first answer held %d servers, list %d; want %d", round, first, len(list), len(users))
		}
		for _, s := range list {
			at, ok := started[s.ContainerID]
			if !ok || s.State != api.StateRunning {
				t.Fatalf("round %d: unexpected server %+v", round, s)
			}
			if now := inspect(t, testenv.Client(w.eng), s.ContainerID); !now.Running || now.StartedAt != at {
				t.Fatalf("round %d: container of %s restarted (%s -> %s)", round, s.User, at, now.StartedAt)
			}
		}
	}
	if n := len(listOurs(t, w)); n != len(users) {
		t.Fatalf("%d containers after 10 kills, want %d", n, len(users))
	}
	if testenv.TreeSum(t, w.homes) != homesBefore {
		t.Fatal("homes changed across the kills")
	}
	t.Logf("10 kill -9 in a row: slowest restart to first answer with every server adopted: %s", worst.Round(time.Millisecond))
}

// TestKill9DuringConcurrentStarts kills the daemon while 20 starts are in
// flight: afterwards every server is running or cleanly absent, half-made
// containers are reaped, nothing is duplicated, homes are intact, and every
// server can be started again.
func TestKill9DuringConcurrentStarts(t *testing.T) {
	w := newProcWorld(t, "reap_grace: 1s\n")
	ctx := context.Background()
	p := w.start(t)
	waitAnswer(t, w.c)
	const n = 20
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("student%02d", i)
		// Existing homes with work in them.
		dir := filepath.Join(w.homes, spawnd.Escape(users[i]))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "thesis.tex"), []byte("chapter "+users[i]), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dir, filepath.Join(dir, "thesis.tex")} {
			if err := os.Chown(p, 1000, 100); err != nil {
				t.Fatal(err)
			}
		}
	}
	homesBefore := testenv.TreeSum(t, w.homes)
	var answered atomic.Int32
	for _, u := range users {
		go func() {
			if _, err := w.c.Start(ctx, u, "", api.StartRequest{}); err == nil {
				answered.Add(1)
			}
		}()
	}
	// Kill as soon as the first start has answered: some starts are done,
	// others in flight (the admission limit lets 4 boot at once).
	deadline := time.Now().Add(30 * time.Second)
	for answered.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no start answered within 30 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	p.kill()
	done := answered.Load()
	mid := len(listOurs(t, w))
	// More containers than answered starts: those starts were in flight.
	if done >= n || mid <= int(done) {
		t.Fatalf("the kill did not land while starts were in flight: %d of %d answered, %d containers", done, n, mid)
	}
	t.Logf("killed with %d of %d starts answered and %d containers on the engine", done, n, mid)
	p = w.start(t)
	waitAnswer(t, w.c)

	// Half-made containers go within reap_grace (1 s) plus a reaper tick.
	deadline = time.Now().Add(20 * time.Second)
	for {
		created := 0
		for _, c := range listOurs(t, w) {
			if c.State == "created" {
				created++
			}
		}
		if created == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d half-made containers were not reaped", created)
		}
		time.Sleep(100 * time.Millisecond)
	}
	list, err := w.c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range list {
		if seen[s.User] {
			t.Fatalf("duplicate server for %s", s.User)
		}
		seen[s.User] = true
		if s.State != api.StateRunning && s.State != api.StatePending {
			t.Fatalf("after the kill: %+v", s)
		}
	}
	if testenv.TreeSum(t, w.homes) != homesBefore {
		t.Fatal("homes changed")
	}
	t.Logf("kill -9 with 20 starts in flight: %d containers existed at the kill, %d servers adopted", mid, len(list))

	// Every server starts now, exactly once.
	for _, u := range users {
		if _, err := w.c.Start(ctx, u, "", api.StartRequest{}); err != nil {
			t.Fatalf("start %s after the kill: %v", u, err)
		}
	}
	if got := listOurs(t, w); len(got) != n {
		var desc []string
		for _, c := range got {
			desc = append(desc, c.Labels[labels.User]+":"+string(c.State))
		}
		logb, _ := os.ReadFile(filepath.Join(filepath.Dir(w.config), "daemon.log"))
		t.Fatalf("%d containers for %d users: %v\ndaemon log:\n%s", len(got), n, desc, logb)
	}
}

func listOurs(t *testing.T, w *procWorld) []container.Summary {
	t.Helper()
	f := client.Filters{}
	f.Add("label", labels.Managed+"=true")
	cfgb, _ := os.ReadFile(w.config)
	for _, line := range strings.Split(string(cfgb), "\n") {
		if v, ok := strings.CutPrefix(line, "instance: "); ok {
			f.Add("label", labels.Instance+"="+v)
		}
	}
	res, err := testenv.Client(w.eng).ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	return res.Items
}

// waitAnswer polls the daemon's list until it answers and returns how many
// servers its first answer held.
func waitAnswer(t *testing.T, c *api.Client) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := c.List(ctx)
		cancel()
		if err == nil {
			return len(l)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not answer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type containerState struct {
	Running   bool
	StartedAt string
}

func inspect(t *testing.T, cli *client.Client, id string) containerState {
	t.Helper()
	res, err := cli.ContainerInspect(context.Background(), id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", id, err)
	}
	return containerState{Running: res.Container.State.Running, StartedAt: res.Container.State.StartedAt}
}

func newToken(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("%x", time.Now().UnixNano()) + "-test-token-0123456789"
}

// TestCLIPsStopAndHome drives the client commands against a daemon process.
func TestCLIPsStopAndHome(t *testing.T) {
	w := newProcWorld(t, "")
	w.start(t)
	waitAnswer(t, w.c)
	ctx := context.Background()
	for _, u := range []string{"a/b", "carl"} {
		if _, err := w.c.Start(ctx, u, "", api.StartRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.c.Start(ctx, "carl", "lab", api.StartRequest{}); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	_ = os.WriteFile(tokFile, []byte(w.tok+"\n"), 0o600)
	addr := strings.TrimPrefix(w.c.BaseURL(), "http://")
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(w.bin, append(args, "--addr", addr, "--token-file", tokFile)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := cli("ps")
	if err != nil {
		t.Fatalf("ps: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "USER") || !strings.Contains(out, "a/b") || !strings.Contains(out, "lab") {
		t.Fatalf("ps:\n%s", out)
	}
	if out, err := cli("stop", "carl/lab"); err != nil || !strings.Contains(out, "stopped carl/lab") {
		t.Fatalf("stop carl/lab: %v %s", err, out)
	}
	if out, err := cli("stop", "a/b", "--server", ""); err != nil {
		t.Fatalf("stop a/b: %v %s", err, out)
	}
	if out, err := cli("home", "delete", "carl", "--yes"); err == nil || !strings.Contains(out, "stop it before") {
		t.Fatalf("home delete with a server running: %v %s", err, out)
	}
	if out, err := cli("stop", "carl"); err != nil {
		t.Fatalf("stop carl: %v %s", err, out)
	}
	if out, err := cli("home", "delete", "carl", "--yes"); err != nil {
		t.Fatalf("home delete: %v %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(w.homes, spawnd.Escape("carl"))); !os.IsNotExist(err) {
		t.Fatal("carl's home is still there")
	}
	if _, err := os.Stat(filepath.Join(w.homes, spawnd.Escape("a/b"))); err != nil {
		t.Fatal("a/b's home was touched")
	}
	out, _ = cli("ps")
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("ps after stops:\n%s", out)
	}
	if out, err := exec.Command(w.bin, "ps", "--addr", addr).CombinedOutput(); err == nil || !strings.Contains(string(out), "no token") {
		t.Fatalf("ps without a token: %v %s", err, out)
	}
}

// TestKill9DuringBuild: `spawnd serve` killed with -9 in the middle of an
// env build it runs for the API leaves the previous lock whole and serving
// (a relock replaces the lock only after its image is built), and the next
// daemon's build of the same spec succeeds.
func TestKill9DuringBuild(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	env := fmt.Sprintf("kbuild%d", time.Now().UnixNano()%1000000)
	spec := filepath.Join(dir, env+".yaml")
	write := func(apt string) {
		body := fmt.Sprintf("name: %s\nbase: %s\napt: [%s]\n", env, base, apt)
		if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("jq")
	t.Cleanup(func() { testenv.RemoveImages(eng, labels.Env, env) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)}); err != nil {
		t.Fatal(err)
	}
	before, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		t.Fatal(err)
	}
	w := newProcWorld(t, fmt.Sprintf("  %s: {spec: %s}\ndefault_env: team\n", env, spec))
	p := w.start(t)
	waitAnswer(t, w.c)

	write("jq, tree") // a relock and a new apt layer: seconds of work for the engine
	killed := make(chan struct{})
	var once sync.Once
	var seen []string
	err = w.c.BuildEnv(ctx, env, true, func(ev api.BuildEvent) error {
		seen = append(seen, ev.Phase+" "+ev.Step)
		if ev.Phase == "build" && ev.Step != "accepted" && !ev.Done { // locked; the image is being built
			once.Do(func() { p.kill(); close(killed) })
		}
		return nil
	})
	select {
	case <-killed:
	default:
		t.Fatalf("the build ended before the daemon could be killed in it (err %v, events %v)", err, seen)
	}
	t.Logf("killed during %q (events %v); the client saw: %v", seen[len(seen)-1], seen, err)
	after, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		t.Fatalf("the lock after kill -9 during a build: %v", err)
	}
	if after.Digest != before.Digest {
		t.Fatalf("the lock changed although its build never finished: %s -> %s", before.Digest, after.Digest)
	}

	w.start(t)
	waitAnswer(t, w.c)
	var last api.BuildEvent
	if err := w.c.BuildEnv(ctx, env, true, func(ev api.BuildEvent) error { last = ev; return nil }); err != nil || !last.Done || last.Error != "" {
		t.Fatalf("the build after the restart: %v %+v", err, last)
	}
	done, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil || done.Digest == before.Digest || done.Tag() != last.Tag {
		t.Fatalf("the lock after the second build: %+v %v (event tag %s)", done, err, last.Tag)
	}
	if err := eng.CheckImage(ctx, done.Tag()); err != nil {
		t.Fatalf("the new lock's image: %v", err)
	}
}
