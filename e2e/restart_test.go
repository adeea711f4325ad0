package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// newProcessWorld is a world whose spawnd runs as its own process: homes,
// the hub's log, the API token in a file, free ports, all in dir. The
// caller writes spawnd.yaml (w.spawndAddr, tokFile, w.homes) and runs it
// with w.newSpawndProcess.
func newProcessWorld(t *testing.T, eng *docker.Engine, venv, dir string) (w *world, tokFile string) {
	t.Helper()
	homes := filepath.Join(dir, "homes")
	if err := os.MkdirAll(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	w = &world{t: t, eng: eng, dir: dir, hubLog: logf, adminToken: randHex(16), venv: venv, homes: homes,
		hubPort: freePort(t), proxyPort: freePort(t), spawndAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	w.cfg = daemon.Config{Token: randHex(16)}
	tokFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(w.cfg.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return w, tokFile
}

// spawndProcess is `spawnd serve` as its own process, built from the tree,
// to be killed -9 and started again.
type spawndProcess struct {
	w      *world
	bin    string
	config string
	c      *api.Client
	proc   *exec.Cmd
}

func (w *world) newSpawndProcess(config string, c *api.Client) *spawndProcess {
	w.t.Helper()
	bin := filepath.Join(w.dir, "spawnd")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(testenv.RepoRoot(w.t), "cmd", "spawnd")).CombinedOutput(); err != nil {
		w.t.Fatalf("building spawnd: %v\n%s", err, out)
	}
	return &spawndProcess{w: w, bin: bin, config: config, c: c}
}

// start runs spawnd serve and waits (at most 60 s) until its engine is up.
func (p *spawndProcess) start() {
	p.w.t.Helper()
	p.proc = exec.Command(p.bin, "serve", "--config", p.config)
	p.proc.Stdout, p.proc.Stderr = p.w.hubLog, p.w.hubLog
	p.proc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // gone with the test, even after a -timeout kill
	if err := p.proc.Start(); err != nil {
		p.w.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h, err := p.c.Health(ctx)
		cancel()
		if err == nil && h.Engine == "up" {
			return
		}
		if time.Now().After(deadline) {
			p.w.t.Fatalf("spawnd did not come up:\n%s", p.w.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 kills it as a crash would.
func (p *spawndProcess) kill9() {
	_ = p.proc.Process.Signal(syscall.SIGKILL)
	_ = p.proc.Wait()
}

// TestClassStartSurvivesRestarts starts a class through a real JupyterHub 6
// and a real `spawnd serve` process, and restarts first the hub, then spawnd
// with kill -9, while the starts are in flight.
// Afterwards every user has a ready server through the proxy without
// asking again (settle asks again, as a person would click "start", only
// so that a failure says who), each user has exactly one container, every
// container is one the hub knows, and homes keep their files.
func TestClassStartSurvivesRestarts(t *testing.T) {
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	spec := filepath.Join(dir, "jh6.yaml")
	if err := os.WriteFile(spec, []byte(hubEnvSpec(6)), 0o644); err != nil {
		t.Fatal(err)
	}
	parsed, err := envs.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if _, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)}); err != nil {
		t.Fatal(err)
	}
	w, tokFile := newProcessWorld(t, eng, venv, dir)
	homes := w.homes
	inst := testenv.Instance(t, eng)
	config := filepath.Join(dir, "spawnd.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`listen: %s
token_file: %s
instance: %s
homes_root: %s
network: {name: spawnd-%s}
start_timeout: 3m
envs:
  %s: {spec: %s}
`, w.spawndAddr, tokFile, inst, homes, inst, parsed.Name, spec)), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	sp := w.newSpawndProcess(config, c)
	startProc, kill9 := sp.start, sp.kill9
	startProc()
	defer kill9()
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()

	const n = 12
	var users []string
	for i := range n {
		users = append(users, fmt.Sprintf("s%02d", i))
	}
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	startAll := func() {
		var wg sync.WaitGroup
		for _, u := range users {
			wg.Add(1)
			go func() { defer wg.Done(); w.hubAPI("POST", "/users/"+u+"/server", nil, nil) }()
		}
		wg.Wait()
	}
	// settle asks again for every server the hub does not have (as a person
	// would click "start" again; at most twice each), until every server is
	// ready and answers through the proxy.
	settle := func(what string) map[string]int {
		t.Helper()
		asked := map[string]int{}
		ready := map[string]bool{}
		deadline := time.Now().Add(5 * time.Minute)
		for len(ready) < n {
			for _, u := range users {
				if ready[u] {
					continue
				}
				var hu hubUser
				w.hubAPI("GET", "/users/"+u, nil, &hu)
				srv, ok := hu.Servers[""]
				switch {
				case ok && srv.Ready:
					ready[u] = true
				case !ok && asked[u] < 2:
					asked[u]++
					w.hubAPI("POST", "/users/"+u+"/server", nil, nil)
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d servers ready after 5 minutes (asked again: %v)\n%s", what, len(ready), n, asked, w.logTail())
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Logf("%s: all %d ready; asked again: %v", what, n, asked)
		for _, u := range users {
			tok := w.userToken(u)
			if code := w.serverAPI(u, "", tok, "GET", "", nil, nil); code != 200 {
				var hu hubUser
				w.hubAPI("GET", "/users/"+u, nil, &hu)
				srv, err := c.Status(ctx, u, "")
				t.Fatalf("%s: %s's server does not answer through the proxy: %d\nthe hub: %+v\nspawnd: %+v (%v)\nthe hub's log lines of %s:\n%s",
					what, u, code, hu, srv, err, u, w.logLinesOf(u))
			}
		}
		servers, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		per := map[string]int{}
		for _, s := range servers {
			if s.State == api.StateRunning {
				per[s.User]++
			}
		}
		for _, u := range users {
			if per[u] != 1 {
				t.Fatalf("%s: %s has %d running servers in spawnd, want 1 (%+v)", what, u, per[u], servers)
			}
		}
		if len(per) != n {
			t.Fatalf("%s: spawnd runs servers of %d users, want %d", what, len(per), n)
		}
		return asked
	}

	// inFlight counts the starts spawnd has in flight (pending, or running
	// and not yet listening); waitInFlight waits (a minute at most) until
	// there is one, so that a restart "while the class starts" is one.
	inFlightNow := func() int {
		n := 0
		if servers, err := c.List(ctx); err == nil {
			for _, s := range servers {
				if s.State == api.StatePending || (s.State == api.StateRunning && !s.Ready) {
					n++
				}
			}
		}
		return n
	}
	waitInFlight := func(what string) int {
		deadline := time.Now().Add(time.Minute)
		for {
			if n := inFlightNow(); n > 0 {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no start was in flight within a minute of the class start", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// 1. The hub restarts while the class starts.
	startAll()
	t.Logf("restarting the hub with %d starts in flight", waitInFlight("the hub restart"))
	w.stopHub()
	w.startHub(opts.Network.Gateway)
	// The restarted hub adopts every server spawnd was starting, at the
	// address spawnd gives (SpawndSpawner.get_url), not the placeholder
	// address its database held for a start in flight: nobody has to ask
	// again, and no route points at a port that is not the user's server.
	if asked := settle("after a hub restart during the class start"); len(asked) > 0 {
		t.Fatalf("after a hub restart during the class start: the hub gave up servers spawnd was starting, asked again: %v\n%s", asked, w.logLinesOf("does not appear to be running"))
	}

	// A file in every home, to check nothing is lost below.
	for _, u := range users {
		tok := w.userToken(u)
		note := map[string]any{"type": "file", "format": "text", "content": "mine: " + u + "\n"}
		if code := w.serverAPI(u, "", tok, "PUT", "/contents/note.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("writing %s's file: %d", u, code)
		}
	}

	// 2. spawnd restarts while the class starts.
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() { defer wg.Done(); w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil) }()
	}
	wg.Wait()
	for _, u := range users {
		w.waitStopped(u, "")
	}
	startAll()
	// kill -9 while starts are in flight: some servers still boot behind
	// the admission limit (the daemon must have starts in flight, or the
	// test would prove nothing).
	inFlight := waitInFlight("the spawnd kill")
	kill9()
	t.Logf("killed spawnd with %d starts in flight", inFlight)
	startProc()
	// The hub's spawner asks again for a start spawnd did not answer
	// (SpawndSpawner._post_start): a spawnd restart costs nobody a click.
	if asked := settle("after spawnd was killed (-9) during the class start"); len(asked) > 0 {
		t.Fatalf("after spawnd was killed (-9) during the class start: starts failed, asked again: %v\n%s", asked, w.logLinesOf("SpawnException"))
	}

	for _, u := range users {
		b, err := os.ReadFile(filepath.Join(homes, spawnd.Escape(u), "note.txt"))
		if err != nil || string(b) != "mine: "+u+"\n" {
			t.Fatalf("%s's home lost its file: %q %v", u, b, err)
		}
	}
}
