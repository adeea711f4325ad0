// Package e2e drives real JupyterHubs (4, 5 and 6 from PyPI, each in its own
// virtualenv made by scripts/hub-venvs, with Debian's configurable-http-proxy)
// whose SpawndSpawner (installed as a wheel, spawner_class = "spawnd") talks
// to a real spawnd on the real engine, running images that spawnd builds
// with the single-user side at the hub's version. Everything goes through the
// Hub's REST API and the proxy, as a user's browser would.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/doctor"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort is a port for a process the test starts later (testenv.FreePort).
func freePort(t *testing.T) int { return testenv.FreePort(t) }

// world is one hub, one daemon, one engine.
type world struct {
	t          *testing.T
	eng        *docker.Engine
	dir        string
	cfg        daemon.Config
	daemonStop context.CancelFunc
	daemonDone chan error
	hub        *exec.Cmd
	hubLog     *os.File
	hubPort    int
	proxyPort  int
	adminToken string
	spawndAddr string
	// venv is the hub's virtualenv (scripts/hub-venvs).
	venv string
	// extraHubConfig is appended to the hub's config.
	extraHubConfig string
	// shippedEnv, when set, runs the shipped deploy/jupyterhub_config.py
	// with this environment (SPAWND_HUB_AUTH and the rest) instead of the
	// tests' own config.
	shippedEnv []string
	// homes is the daemon's homes_root.
	homes string
}

func (w *world) startDaemon() {
	w.t.Helper()
	cfg := w.cfg
	cfg.Listen = w.spawndAddr
	d, err := daemon.New(cfg, slog.New(slog.NewTextHandler(w.hubLog, nil)))
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.daemonStop, w.daemonDone = cancel, make(chan error, 1)
	go func() { w.daemonDone <- d.Run(ctx); d.Close() }()
	c, _ := api.NewClient(w.spawndAddr, cfg.Token)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if h, err := c.Health(context.Background()); err == nil && h.Engine == "up" {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatal("spawnd did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *world) stopDaemon() {
	if w.daemonStop != nil {
		w.daemonStop()
		<-w.daemonDone
		w.daemonStop = nil
	}
}

func (w *world) startHub(gateway string) {
	w.t.Helper()
	conf := filepath.Join(w.dir, "jupyterhub_config.py")
	body := w.hubConfig(gateway)
	if w.shippedEnv != nil {
		body = w.shippedHubConfig()
	}
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		w.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(w.venv, "bin", "jupyterhub"), "-f", conf)
	cmd.Dir = w.dir
	// Debian's configurable-http-proxy; the spawner comes from the venv's wheel (no PYTHONPATH).
	cmd.Env = append(os.Environ(), "NODE_PATH=/usr/share/nodejs", "PATH="+filepath.Join(w.venv, "bin")+":"+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, w.shippedEnv...)
	cmd.Stdout, cmd.Stderr = w.hubLog, w.hubLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM} // the hub stops its proxy when it ends
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.hub = cmd
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/hub/api/", w.proxyPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("the hub did not come up; its log:\n%s", w.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hubConfig is the tests' own hub config: dummy logins, an admin service token.
func (w *world) hubConfig(gateway string) string {
	return fmt.Sprintf(`
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = %d
c.JupyterHub.hub_ip = %q
c.JupyterHub.hub_port = %d
c.JupyterHub.db_url = "sqlite:///%s/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "%s/cookie_secret"
c.JupyterHub.pid_file = "%s/jupyterhub.pid"
c.ConfigurableHTTPProxy.auth_token = %q
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d"
c.ConfigurableHTTPProxy.pid_file = "%s/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
c.JupyterHub.cleanup_servers = False
c.JupyterHub.spawner_class = "spawnd"
c.SpawndSpawner.api_url = "http://%s"
c.SpawndSpawner.token = %q
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
c.Spawner.poll_interval = 1
c.JupyterHub.load_groups = {"physics": ["alice"]}
c.JupyterHub.services = [{"name": "e2e", "api_token": %q}]
c.JupyterHub.load_roles = [{"name": "e2e-admin", "services": ["e2e"],
    "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens", "read:users", "read:servers", "access:servers"]}]
`, w.proxyPort, gateway, w.hubPort, w.dir, w.dir, w.dir, "proxy-"+w.adminToken, freePort(w.t), w.dir,
		w.spawndAddr, w.cfg.Token, w.adminToken) + w.extraHubConfig
}

// useShippedConfig makes the next startHub run deploy/jupyterhub_config.py
// as shipped, wired to this world's daemon and ports, with the settings
// given (SPAWND_HUB_AUTH and the rest). The config asks spawnd for the
// gateway to put the hub's API on, as on a real host.
func (w *world) useShippedConfig(settings ...string) {
	w.t.Helper()
	tok := filepath.Join(w.dir, "token")
	if err := os.WriteFile(tok, []byte(w.cfg.Token+"\n"), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.shippedEnv = append([]string{
		"SPAWND_URL=http://" + w.spawndAddr,
		"SPAWND_TOKEN_FILE=" + tok,
		"SPAWND_HUB_STATE=" + w.dir,
		fmt.Sprintf("SPAWND_HUB_PORT=%d", w.proxyPort),
		fmt.Sprintf("SPAWND_HUB_API_PORT=%d", w.hubPort),
		fmt.Sprintf("SPAWND_PROXY_API_PORT=%d", freePort(w.t)),
		"SPAWND_HUB_IP=",
	}, settings...)
}

// shippedHubConfig runs deploy/jupyterhub_config.py as shipped (set by
// w.shippedEnv), adding only a service token the test drives the hub with.
func (w *world) shippedHubConfig() string {
	return fmt.Sprintf(`load_subconfig(%q)
c.JupyterHub.services.append({"name": "e2e", "api_token": %q})
c.JupyterHub.load_roles.append({"name": "e2e-admin", "services": ["e2e"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "read:servers", "access:servers"]})
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
`, filepath.Join(testenv.RepoRoot(w.t), "deploy", "jupyterhub_config.py"), w.adminToken) + w.extraHubConfig
}

// stopHub ends the hub and its proxy (its process group), gracefully.
func (w *world) stopHub() {
	if w.hub == nil {
		return
	}
	_ = syscall.Kill(-w.hub.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = w.hub.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-w.hub.Process.Pid, syscall.SIGKILL)
		<-done
	}
	w.hub = nil
}

func (w *world) logTail() string {
	b, _ := os.ReadFile(w.hubLog.Name())
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return string(b)
}

// logLinesOf is every line of the hub's log (the daemon's too) that names
// user, or holds any string (at most the last 80): what a failure about one
// user needs.
func (w *world) logLinesOf(user string) string {
	b, _ := os.ReadFile(w.hubLog.Name())
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, user) {
			out = append(out, l)
		}
	}
	if len(out) > 80 {
		out = out[len(out)-80:]
	}
	return strings.Join(out, "\n")
}

// countInLog counts the lines of the hub's log (the daemon's too) that
// contain s.
func (w *world) countInLog(s string) int {
	b, _ := os.ReadFile(w.hubLog.Name())
	return strings.Count(string(b), s)
}

// hubAPI calls the Hub's REST API with the admin service token.
func (w *world) hubAPI(method, path string, body any, out any) int {
	w.t.Helper()
	return w.call(method, fmt.Sprintf("http://127.0.0.1:%d/hub/api%s", w.proxyPort, path), w.adminToken, body, out)
}

func (w *world) call(method, url, token string, body any, out any) int {
	w.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "token "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		_ = json.Unmarshal(b, out)
	}
	if resp.StatusCode >= 400 {
		w.t.Logf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode
}

type hubUser struct {
	Name    string `json:"name"`
	Servers map[string]struct {
		Ready   bool   `json:"ready"`
		Pending string `json:"pending"`
	} `json:"servers"`
}

// waitReady waits until the hub reports the user's server ready.
func (w *world) waitReady(user, server string) {
	w.t.Helper()
	deadline := time.Now().Add(150 * time.Second)
	for {
		var u hubUser
		w.hubAPI("GET", "/users/"+user, nil, &u)
		if s, ok := u.Servers[server]; ok && s.Ready {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s/%s never became ready: %+v\nhub log:\n%s", user, server, u, w.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (w *world) userToken(user string) string {
	w.t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if code := w.hubAPI("POST", "/users/"+user+"/tokens", map[string]any{"note": "e2e"}, &tok); code != 200 && code != 201 {
		w.t.Fatalf("token for %s: %d", user, code)
	}
	return tok.Token
}

// serverAPI calls the user's single-user server through the proxy.
func (w *world) serverAPI(user, server, token, method, path string, body, out any) int {
	w.t.Helper()
	prefix := "/user/" + user + "/"
	if server != "" {
		prefix += server + "/"
	}
	return w.call(method, fmt.Sprintf("http://127.0.0.1:%d%sapi%s", w.proxyPort, prefix, path), token, body, out)
}

// hubVersions are the JupyterHub releases the scenario runs on, each with
// its single-user side at the same version (scripts/hub-venvs pins the hubs).
var hubVersions = map[int]string{4: "4.1.6", 5: "5.5.4", 6: "6.1.1"}

// hubEnvSpec is a small env whose single-user side is JupyterHub version,
// from PyPI, locked with hashes.
func hubEnvSpec(major int) string {
	return fmt.Sprintf(`name: jh%d
description: JupyterHub %s single-user server from PyPI
base: %s
apt: [python3, python3-pip, ca-certificates]
pip:
  packages: ["jupyterhub==%s", "jupyter_server>=2,<3"]
jupyter:
  cmd: [jupyterhub-singleuser]
`, major, hubVersions[major], testenv.DebianBase, hubVersions[major])
}

func TestJupyterHub4DrivesSpawnd(t *testing.T) { hubVersionScenario(t, 4) }
func TestJupyterHub5DrivesSpawnd(t *testing.T) { hubVersionScenario(t, 5) }
func TestJupyterHub6DrivesSpawnd(t *testing.T) { hubVersionScenario(t, 6) }

func hubVersionScenario(t *testing.T, major int) {
	venv := testenv.HubVenv(t, major)
	out, err := exec.Command(filepath.Join(venv, "bin", "jupyterhub"), "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != hubVersions[major] {
		t.Fatalf("the venv %s runs JupyterHub %q (%v), want %s (run scripts/hub-venvs)", venv, out, err, hubVersions[major])
	}
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	hubScenario(t, eng, hubEnvSpec(major), venv)
}

// newWorld builds the env spec, and starts spawnd with it (a physics team
// with a read-only shared folder); the hub is the caller's to start. Image,
// daemon and hub are cleaned up with the test.
func newWorld(t *testing.T, eng *docker.Engine, specText, venv string) *world {
	t.Helper()
	return newLockedWorld(t, eng, specText, nil, venv)
}

// runLocks are the locks tests of this run made, by spec text, so that a
// later test of the same spec reuses the lock and its image.
var runLocks sync.Map

func lockedThisRun(specText string) ([]byte, bool) {
	if v, ok := runLocks.Load(specText); ok {
		return v.([]byte), true
	}
	return nil, false
}

func keepLock(specText string, lock []byte) { runLocks.Store(specText, lock) }

// newLockedWorld is newWorld with the spec's lock given (nil: the lock a
// test of this run made of the same spec, else locked anew).
// A locked env's image is kept after the test (it is a shipped env's, as
// envs/team.yaml's, which other tests and the quickstart reuse).
func newLockedWorld(t *testing.T, eng *docker.Engine, specText string, lock []byte, venv string, mutate ...func(*daemon.Config)) *world {
	t.Helper()
	dir := t.TempDir()
	spec := filepath.Join(dir, "team.yaml")
	if err := os.WriteFile(spec, []byte(specText), 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := lock == nil
	if fresh {
		// A spec another test of this run has locked keeps that lock (and
		// its image): locking and building it again would only repeat them.
		lock, _ = lockedThisRun(specText)
	}
	if lock != nil {
		if err := os.WriteFile(envs.LockPath(spec), lock, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	parsed, err := envs.Parse(spec, []byte(specText))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	res, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("team image %s (built: %v)", res.Tag, res.Built)
	if fresh {
		// Its image stays for the later tests of the run; the sweep after
		// the suite removes test envs' images.
		if b, err := os.ReadFile(envs.LockPath(spec)); err == nil {
			keepLock(specText, b)
		}
	}

	homes := filepath.Join(dir, "homes")
	shared := filepath.Join(dir, "physics-shared")
	for _, d := range []string{homes, shared} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(shared, "README.txt"), []byte("physics team data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	inst := testenv.Instance(t, eng)
	w := &world{t: t, eng: eng, dir: dir, hubLog: logf, adminToken: randHex(16), venv: venv, homes: homes,
		hubPort: freePort(t), proxyPort: freePort(t), spawndAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	w.cfg = daemon.Config{
		Token: randHex(16),
		Config: spawnd.Config{
			Instance:  inst,
			HomesRoot: homes,
			Network:   spawnd.NetworkConfig{Name: "spawnd-" + inst},
			Envs:      map[string]spawnd.EnvConfig{parsed.Name: {Spec: spec}},
			Teams: map[string]spawnd.TeamConfig{
				"physics": {Groups: []string{"physics"}, Shared: []spawnd.SharedFolder{{Source: shared, Target: "/home/jovyan/shared", ReadOnly: true}}},
			},
			StartTimeout: 2 * time.Minute,
		},
	}
	for _, f := range mutate {
		f(&w.cfg)
	}
	w.startDaemon()
	t.Cleanup(w.stopDaemon)
	return w
}

// hubScenario builds the env spec, starts spawnd and a JupyterHub (on the
// host, from the virtualenv venv), and drives them through the Hub's REST API.
func hubScenario(t *testing.T, eng *docker.Engine, specText, venv string) {
	w := newWorld(t, eng, specText, venv)
	homes := w.homes
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	opts, err := c.Options(ctx)
	if err != nil || opts.Network.Gateway == "" {
		t.Fatalf("options: %+v %v", opts, err)
	}
	// The hub listens on the user network's gateway: reachable from the
	// containers, not from other machines.
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()
	// The tests' own hub logs in anyone (dummy, no password): spawnd doctor
	// must catch that on the running hub.
	rs := doctor.Run(ctx, doctor.Input{HubURL: fmt.Sprintf("http://127.0.0.1:%d", w.proxyPort), Config: &w.cfg.Config})
	probe := findResult(rs, "hub probe")
	if probe.Status != doctor.Fail || !strings.Contains(probe.Detail, "made-up user") {
		t.Fatalf("doctor did not catch a hub that logs anyone in: %+v", probe)
	}
	// doctor reads the running hub's version and the env's locked
	// jupyterhub: the same major here.
	if r := findResult(rs, "hub version"); r.Status != doctor.OK || !strings.Contains(r.Detail, "the hub runs JupyterHub ") || !strings.Contains(r.Detail, "; envs lock ") {
		t.Errorf("doctor's hub version check against a real hub: %+v", r)
	}

	for _, u := range []string{"alice", "bob"} {
		if code := w.hubAPI("POST", "/users/"+u, nil, nil); code != 201 && code != 409 {
			t.Fatalf("creating %s: %d", u, code)
		}
	}

	// Start alice's server and follow the progress the hub streams.
	if code := w.hubAPI("POST", "/users/alice/server", nil, nil); code != 201 && code != 202 {
		t.Fatalf("start: %d\n%s", code, w.logTail())
	}
	events := w.progress("alice", "")
	w.waitReady("alice", "")
	checkProgress(t, events)

	tok := w.userToken("alice")
	if code := w.serverAPI("alice", "", tok, "GET", "", nil, nil); code != 200 {
		t.Fatalf("GET /user/alice/api through the proxy: %d", code)
	}
	note := map[string]any{"type": "file", "format": "text", "content": "written through the hub\n"}
	if code := w.serverAPI("alice", "", tok, "PUT", "/contents/note.txt", note, nil); code != 201 && code != 200 {
		t.Fatalf("writing a file: %d", code)
	}
	if _, err := os.Stat(filepath.Join(homes, spawnd.Escape("alice"), "note.txt")); err != nil {
		t.Fatalf("the file is not in alice's home on the host: %v", err)
	}

	// The team's shared folder is there for alice.
	var listing struct {
		Content []struct{ Name string } `json:"content"`
	}
	w.serverAPI("alice", "", tok, "GET", "/contents/shared", nil, &listing)
	if len(listing.Content) != 1 || listing.Content[0].Name != "README.txt" {
		t.Fatalf("alice's shared folder: %+v", listing)
	}

	// Stop and start: the file is still there.
	if code := w.hubAPI("DELETE", "/users/alice/server", nil, nil); code != 204 && code != 202 {
		t.Fatalf("stop: %d", code)
	}
	w.waitStopped("alice", "")
	if code := w.hubAPI("POST", "/users/alice/server", nil, nil); code != 201 && code != 202 {
		t.Fatalf("restart: %d", code)
	}
	w.waitReady("alice", "")
	var file struct {
		Content string `json:"content"`
	}
	if code := w.serverAPI("alice", "", tok, "GET", "/contents/note.txt", nil, &file); code != 200 || file.Content != "written through the hub\n" {
		t.Fatalf("reading the file back: %d %q", code, file.Content)
	}

	// A named server.
	if code := w.hubAPI("POST", "/users/alice/servers/lab", nil, nil); code != 201 && code != 202 {
		t.Fatalf("named server: %d", code)
	}
	w.waitReady("alice", "lab")
	if code := w.serverAPI("alice", "lab", tok, "GET", "", nil, nil); code != 200 {
		t.Fatalf("named server through the proxy: %d", code)
	}

	// bob is in no team: no shared folder.
	if code := w.hubAPI("POST", "/users/bob/server", nil, nil); code != 201 && code != 202 {
		t.Fatalf("bob: %d", code)
	}
	w.waitReady("bob", "")
	btok := w.userToken("bob")
	if code := w.serverAPI("bob", "", btok, "GET", "/contents/shared", nil, nil); code != 404 {
		t.Fatalf("bob sees a shared folder: %d", code)
	}

	// Restart the hub while servers run: it adopts them.
	servers, _ := c.List(ctx)
	w.stopHub()
	w.startHub(opts.Network.Gateway)
	w.waitReady("alice", "")
	if code := w.serverAPI("alice", "", tok, "GET", "", nil, nil); code != 200 {
		t.Fatalf("after a hub restart: %d\n%s", code, w.logTail())
	}

	// Restart spawnd while servers run (the hub polls every second): the
	// hub keeps them, and the containers were never restarted.
	polls := w.countInLog("Cannot poll alice")
	w.stopDaemon()
	// Wait for the hub to poll alice's server while spawnd is down (an
	// unknown answer, which must not count as stopped), not for a time.
	deadline := time.Now().Add(30 * time.Second)
	for w.countInLog("Cannot poll alice") == polls {
		if time.Now().After(deadline) {
			t.Fatalf("the hub did not poll alice's server within 30 s of spawnd stopping\n%s", w.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.startDaemon()
	w.waitReady("alice", "")
	if code := w.serverAPI("alice", "", tok, "GET", "/contents/note.txt", nil, nil); code != 200 {
		t.Fatalf("after a spawnd restart: %d\n%s", code, w.logTail())
	}
	after, _ := c.List(ctx)
	if len(after) != len(servers) {
		t.Fatalf("servers before %d, after the restarts %d", len(servers), len(after))
	}
	for i := range after {
		if after[i].ContainerID != servers[i].ContainerID || !after[i].StartedAt.Equal(servers[i].StartedAt) {
			t.Fatalf("server %s/%s changed across restarts: %+v vs %+v", after[i].User, after[i].Server, servers[i], after[i])
		}
	}

	// Stop everything through the hub; homes stay.
	for _, p := range []string{"/users/alice/server", "/users/alice/servers/lab", "/users/bob/server"} {
		w.hubAPI("DELETE", p, nil, nil)
	}
	w.waitStopped("alice", "")
	w.waitStopped("bob", "")
	if _, err := os.Stat(filepath.Join(homes, spawnd.Escape("alice"), "note.txt")); err != nil {
		t.Fatalf("alice's home lost after stop: %v", err)
	}
}

func (w *world) waitStopped(user, server string) {
	w.t.Helper()
	w.waitStoppedWithin(user, server, 60*time.Second)
}

// waitStoppedWithin waits until the hub has no such server, at most d.
func (w *world) waitStoppedWithin(user, server string, d time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(d)
	for {
		var u hubUser
		w.hubAPI("GET", "/users/"+user, nil, &u)
		if _, ok := u.Servers[server]; !ok {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s/%s did not stop", user, server)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type hubEvent struct {
	Progress int    `json:"progress"`
	Message  string `json:"message"`
	Ready    bool   `json:"ready"`
	Failed   bool   `json:"failed"`
}

// progress collects the hub's progress stream of a start in the background.
func (w *world) progress(user, server string) <-chan []hubEvent {
	out := make(chan []hubEvent, 1)
	path := "/users/" + user + "/server/progress"
	if server != "" {
		path = "/users/" + user + "/servers/" + server + "/progress"
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/hub/api%s", w.proxyPort, path), nil)
	req.Header.Set("Authorization", "token "+w.adminToken)
	go func() {
		var evs []hubEvent
		defer func() { out <- evs }()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev hubEvent
			if json.Unmarshal([]byte(data), &ev) == nil {
				evs = append(evs, ev)
				if ev.Ready || ev.Failed {
					return
				}
			}
		}
	}()
	return out
}

func checkProgress(t *testing.T, ch <-chan []hubEvent) {
	t.Helper()
	var evs []hubEvent
	select {
	case evs = <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("the progress stream did not end")
	}
	var msgs []string
	last := -1
	for _, ev := range evs {
		if ev.Progress < last {
			t.Fatalf("progress went back: %+v", evs)
		}
		last = ev.Progress
		msgs = append(msgs, ev.Message)
	}
	joined := strings.Join(msgs, " | ")
	for _, want := range []string{"Home directory ready", "Container created", "Container started"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("progress lacks %q: %s", want, joined)
		}
	}
	if len(evs) == 0 || !evs[len(evs)-1].Ready {
		t.Fatalf("progress does not end ready: %s", joined)
	}
	t.Logf("progress: %s", joined)
}

func imageRemoveOpts() client.ImageRemoveOptions { return client.ImageRemoveOptions{Force: true} }
