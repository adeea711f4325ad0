package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// TestWarmClassOnJupyterHub5 and 6: a class starts on warm servers through
// a real JupyterHub and its proxy (pools, issue #28). On JupyterHub 5 the
// homes are the env's uid's (home_owner env); on 6 each person's home is
// owned by a uid of their own (home_owner range), which the warm server,
// running as uid 1000 since before anyone arrived, writes into through an
// idmapped mount on its slot.
func TestWarmClassOnJupyterHub5(t *testing.T) { warmClass(t, 5, spawnd.HomeOwnerEnv) }
func TestWarmClassOnJupyterHub6(t *testing.T) { warmClass(t, 6, spawnd.HomeOwnerRange) }

const warmClassSize = 30

func warmClass(t *testing.T, major int, owner string) {
	testenv.Full(t, "a real engine and JupyterHub")
	venv := testenv.HubVenv(t, major)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	env := fmt.Sprintf("jh%d", major)
	w := newLockedWorld(t, eng, hubEnvSpec(major), nil, venv, func(c *daemon.Config) {
		c.HomeOwner = owner
		c.SlotsDir = testenv.SlotsDir(t)
		if owner == spawnd.HomeOwnerRange {
			c.UIDRange = "2700000-2700999"
		}
		c.Profiles = map[string]spawnd.ProfileConfig{"small": {Memory: "512m", CPUs: 1}}
		c.Pools = []spawnd.PoolConfig{{Env: env, Size: warmClassSize}}
		c.MaxConcurrentStarts = 4
		c.StartTimeout = 3 * time.Minute
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The hub's token for each server, as the hub hands it to the spawner
	// (a subclass that writes it down for this test only): the test then
	// looks for it everywhere a token must never be.
	tokens := filepath.Join(w.dir, "server-tokens")
	w.extraHubConfig = fmt.Sprintf(`
from spawnd_spawner import SpawndSpawner
class TokenRecordingSpawner(SpawndSpawner):
    async def start(self):
        with open(%q, "a") as f:
            f.write(self.user.name + " " + self.api_token + "\n")
        return await super().start()
c.JupyterHub.spawner_class = TokenRecordingSpawner
`, tokens)
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()

	// What the env's authors see (spawnd build, doctor): the boot cost of
	// the team image, measured in a container of it; and an env that is
	// not a Python console script, which cannot be pre-warmed.
	image := ""
	for _, e := range w.cfg.Envs {
		if l, err := envs.ReadLock(envs.LockPath(e.Spec)); err == nil {
			image = l.Tag()
		}
	}
	cost, err := images.BootCost(ctx, eng, image, []string{"jupyterhub-singleuser"})
	if err != nil || cost.Cold != "" || cost.CPUSeconds < 0.2 || len(cost.Top) == 0 || cost.EntryPoint != "jupyterhub.singleuser:main" {
		t.Fatalf("the boot cost of %s: %+v %v; want the CPU-seconds of its imports and their top packages", image, cost, err)
	}
	t.Logf("boot cost: %s", cost)
	busy, err := images.BootCost(ctx, eng, testenv.EnsureBusybox(t, eng), []string{"httpd"})
	if err != nil || !strings.Contains(busy.Cold, "is not a Python console script") {
		t.Fatalf("the boot cost of busybox httpd: %+v %v; want: cannot be pre-warmed, saying why", busy, err)
	}

	pool := waitPool(t, c, warmClassSize, 5*time.Minute)
	if pool.Cold != "" {
		t.Fatalf("the team env could not be pre-warmed: %s", pool.Cold)
	}

	// A warm server holds nothing of anyone: no token, no user, an empty
	// home it cannot read, no home label.
	warm := poolContainers(t, w, ctx)
	if len(warm) != warmClassSize {
		t.Fatalf("%d warm containers on the engine; want %d", len(warm), warmClassSize)
	}
	ins, err := testenv.Client(eng).ContainerInspect(ctx, warm[0], client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(ins.Container)
	for _, bad := range []string{"JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER", labels.User} {
		if strings.Contains(string(raw), bad) {
			t.Fatalf("a warm server's inspect holds %s: %s", bad, raw)
		}
	}
	if ins.Container.Config.User != "1000:100" || ins.Container.HostConfig.Privileged || !contains(ins.Container.HostConfig.CapDrop, "ALL") {
		t.Fatalf("a warm server is not hardened as a server is: user %q privileged %v cap_drop %v", ins.Container.Config.User, ins.Container.HostConfig.Privileged, ins.Container.HostConfig.CapDrop)
	}
	if ins.Container.HostConfig.CPUShares != 2 {
		t.Fatalf("a warm server's CPU weight is %d; want the lowest (2) until it is taken", ins.Container.HostConfig.CPUShares)
	}
	if code, out, _ := testenv.Exec(ctx, eng, warm[0], []string{"ls", "/home/jovyan"}); code == 0 {
		t.Fatalf("a warm server can list its home before anyone took it: %s", out)
	}

	// A warm server that dies before it is taken is replaced; nobody sees it.
	if _, err := testenv.Client(eng).ContainerKill(ctx, warm[1], client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		t.Fatal(err)
	}
	// Replaced: a pool container the engine runs that was not there before
	// (the pool starts one only once it has seen the kill: its count of
	// ready servers alone lags the engine, and once let the class begin
	// one short in CI) and the pool counts all ready again.
	waitPoolWhere(t, c, "the killed warm server replaced", 3*time.Minute, func(p api.Pool) bool {
		now := poolContainers(t, w, ctx)
		fresh := false
		for _, id := range now {
			fresh = fresh || !contains(warm, id)
		}
		return fresh && p.Ready == warmClassSize && !contains(now, warm[1])
	})

	// One user first, to see the spawn page say it.
	users := make([]string, warmClassSize)
	for i := range users {
		users[i] = fmt.Sprintf("w%02d", i)
		if code := w.hubAPI("POST", "/users/"+users[i], nil, nil); code != 201 && code != 409 {
			t.Fatalf("creating %s: %d", users[i], code)
		}
	}
	// users[1] comes back with a ~/.jupyter of their own: a warm server,
	// which imported everything before the home arrived, still reads it.
	configured := users[1]
	if owner == spawnd.HomeOwnerEnv {
		home := filepath.Join(w.homes, spawnd.Escape(configured))
		conf := filepath.Join(home, ".jupyter", "jupyter_server_config.py")
		if err := os.MkdirAll(filepath.Dir(conf), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(conf, []byte(`c.ServerApp.tornado_settings = {"headers": {"X-Spawnd-Home-Config": "read"}}`+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{home, filepath.Dir(conf), conf} {
			if err := os.Chown(p, 1000, 100); err != nil {
				t.Fatal(err)
			}
		}
	}
	if code := w.hubAPI("POST", "/users/"+users[0]+"/server", nil, nil); code != 201 && code != 202 {
		t.Fatalf("start %s: %d\n%s", users[0], code, w.logTail())
	}
	w.waitReady(users[0], "")
	// The progress the spawner relays to the spawn page, from the daemon
	// (a warm start can end within the hub's POST, before a progress
	// stream of the hub's could open; TestBrowserFirstDay reads the page).
	var msgs []string
	pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.Progress(pctx, users[0], "", func(e api.ProgressEvent) error {
		msgs = append(msgs, e.Message)
		return nil
	})
	pcancel()
	if err != nil || !strings.Contains(strings.Join(msgs, "\n"), "A warm server was ready") {
		t.Fatalf("the start's progress did not say a warm server was ready: %q %v", msgs, err)
	}

	// The rest of the class at once.
	var wg sync.WaitGroup
	for _, u := range users[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code := w.hubAPI("POST", "/users/"+u+"/server", nil, nil); code != 201 && code != 202 {
				t.Errorf("start %s: %d", u, code)
			}
		}()
	}
	wg.Wait()
	for _, u := range users {
		w.waitReady(u, "")
	}
	pools, err := c.Pools(ctx)
	if err != nil || len(pools) != 1 || pools[0].Taken != warmClassSize || pools[0].Missed != 0 {
		t.Fatalf("after the class: %+v %v; want all %d starts to have taken a warm server; the daemon on warm servers:\n%s",
			pools, err, warmClassSize, w.logLinesOf("warm server"))
	}

	// Each user's file lands in their own home, as their own.
	servers, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byUser := map[string]api.Server{}
	for _, s := range servers {
		byUser[s.User] = s
	}
	owners := map[uint32]string{}
	for _, u := range users {
		s := byUser[u]
		if !s.Warm || !s.Ready {
			t.Errorf("%s: %+v; want a ready server that began warm", u, s)
		}
		content := u + " " + randomText()
		tok := w.userToken(u)
		note := map[string]any{"type": "file", "format": "text", "content": content}
		if code := w.serverAPI(u, "", tok, "PUT", "/contents/mine.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("%s writing a file through the proxy: %d", u, code)
		}
		host := filepath.Join(w.homes, spawnd.Escape(u), "mine.txt")
		b, err := os.ReadFile(host)
		if err != nil || string(b) != content {
			t.Fatalf("%s's file on the host: %q %v; want %q", u, b, err, content)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(host, &st); err != nil {
			t.Fatal(err)
		}
		switch owner {
		case spawnd.HomeOwnerRange:
			if st.Uid < 2700000 || st.Uid > 2700999 {
				t.Fatalf("%s's file is owned by uid %d on the host; want a uid of the range", u, st.Uid)
			}
			if other, dup := owners[st.Uid]; dup {
				t.Fatalf("%s and %s share uid %d", u, other, st.Uid)
			}
			owners[st.Uid] = u
		default:
			if st.Uid != 1000 {
				t.Fatalf("%s's file is owned by uid %d; want the env's 1000", u, st.Uid)
			}
		}
		// No token in what the engine shows of the server.
		ins, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(ins.Container)
		if strings.Contains(string(raw), "JUPYTERHUB_API_TOKEN") || strings.Contains(string(raw), tok) {
			t.Fatalf("%s's server shows a token in docker inspect", u)
		}
		if ins.Container.HostConfig.CPUShares != 1024 {
			t.Fatalf("%s's taken server has CPU weight %d; want a server's (1024)", u, ins.Container.HostConfig.CPUShares)
		}
	}
	// The hub's token for each server reached the server (its API answered
	// above) and nowhere else: not in docker inspect, not in the server's
	// output, not in the daemon's or the hub's log, and the hand-off file
	// that carried it is gone.
	serverTokens := readServerTokens(t, tokens)
	daemonAndHubLog, _ := os.ReadFile(w.hubLog.Name())
	for _, u := range users {
		tok := serverTokens[u]
		if len(tok) < 16 {
			t.Fatalf("the hub's token for %s's server was not recorded (%q)", u, tok)
		}
		id := byUser[u].ContainerID
		ins, err := testenv.Client(eng).ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(ins.Container)
		if strings.Contains(string(raw), tok) {
			t.Fatalf("%s's server token is in docker inspect", u)
		}
		out, err := exec.CommandContext(ctx, "docker", "logs", id).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "spawnd-launcher") {
			t.Fatalf("docker logs of %s's server: %v\n%s", u, err, out)
		}
		if strings.Contains(string(out), tok) {
			t.Fatalf("%s's server token is in the server's output (docker logs)", u)
		}
		if strings.Contains(string(daemonAndHubLog), tok) {
			t.Fatalf("%s's server token is in the daemon's or the hub's log", u)
		}
		hand := filepath.Join(w.cfg.SlotsDir, ins.Container.Config.Labels[labels.HomeSlot]+".handoff", "start")
		if _, err := os.Stat(hand); !os.IsNotExist(err) {
			t.Fatalf("%s's hand-off file %s is still there after the start (%v)", u, hand, err)
		}
	}
	if owner == spawnd.HomeOwnerEnv {
		req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/user/%s/api", w.proxyPort, configured), nil)
		req.Header.Set("Authorization", "token "+w.userToken(configured))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Spawnd-Home-Config"); got != "read" {
			t.Fatalf("%s's ~/.jupyter/jupyter_server_config.py was not read by the warm server (header %q, status %d)", configured, got, resp.StatusCode)
		}
	}
	// Nobody else's file in anyone's home.
	for _, u := range users {
		entries, _ := os.ReadDir(filepath.Join(w.homes, spawnd.Escape(u)))
		for _, e := range entries {
			if e.Name() != "mine.txt" && !strings.HasPrefix(e.Name(), ".") {
				t.Errorf("%s's home holds %s", u, e.Name())
			}
		}
	}

	// The hub restarts mid-class (an upgrade, a crash): it asks spawnd about
	// each server it had (poll, get_url), and every taken warm server is
	// still its person's, reached through the new proxy.
	w.stopHub()
	w.startHub(opts.Network.Gateway)
	for _, u := range users {
		w.waitReady(u, "")
		if code := w.serverAPI(u, "", w.userToken(u), "GET", "/contents/mine.txt", nil, nil); code != 200 {
			t.Fatalf("%s's server through the restarted hub's proxy: %d\n%s", u, code, w.logLinesOf(u))
		}
	}

	// A server that exits on its own (killed here) leaves no home mounted.
	slots := w.cfg.SlotsDir
	exited := byUser[users[0]].ContainerID
	ins0, err := testenv.Client(eng).ContainerInspect(ctx, exited, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slot0 := filepath.Join(slots, ins0.Container.Config.Labels[labels.HomeSlot])
	if !contains(homeMounts(t, slots), slot0) {
		t.Fatalf("%s's slot %s is not mounted while it runs: %v", users[0], slot0, homeMounts(t, slots))
	}
	if _, err := testenv.Client(eng).ContainerKill(ctx, exited, client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the exited server's slot unmounted", time.Minute, func() (bool, string) {
		return !contains(homeMounts(t, slots), slot0), "still mounted"
	})

	// The class ends: no home stays mounted on the host.
	for _, u := range users {
		if code := w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil); code != 204 && code != 202 && !(u == users[0] && code == 400) {
			t.Fatalf("stop %s: %d", u, code) // users[0]'s exited: the hub may know it is not running
		}
	}
	for _, u := range users {
		w.waitStopped(u, "")
	}
	waitFor(t, "no home mounted on a slot after the class stopped", time.Minute, func() (bool, string) {
		homes := homeMounts(t, slots)
		return len(homes) == 0, strings.Join(homes, "\n")
	})
	for _, u := range users {
		if _, err := os.Stat(filepath.Join(w.homes, spawnd.Escape(u), "mine.txt")); err != nil {
			t.Fatalf("%s's file after the stop: %v", u, err)
		}
	}
}

// readServerTokens reads "user token" lines (the last line for a user wins).
func readServerTokens(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the hub's recorded server tokens: %v", err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if u, tok, ok := strings.Cut(l, " "); ok {
			out[u] = tok
		}
	}
	return out
}

func randomText() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// waitPool waits until the one pool has n ready, at most d.
func waitPool(t *testing.T, c *api.Client, n int, d time.Duration) api.Pool {
	t.Helper()
	return waitPoolWhere(t, c, fmt.Sprintf("%d warm servers ready", n), d, func(p api.Pool) bool { return p.Ready >= n || p.Cold != "" })
}

func waitPoolWhere(t *testing.T, c *api.Client, what string, d time.Duration, ok func(api.Pool) bool) api.Pool {
	t.Helper()
	var last api.Pool
	waitFor(t, what, d, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ps, err := c.Pools(ctx)
		if err != nil || len(ps) != 1 {
			return false, fmt.Sprintf("%+v %v", ps, err)
		}
		last = ps[0]
		return ok(last), fmt.Sprintf("%+v", last)
	})
	return last
}

// waitFor polls cond (every 200 ms) until it holds, failing after d with
// what it last said.
func waitFor(t *testing.T, what string, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, said := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; last: %s", d, what, said)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// poolContainers are the IDs of the instance's running pool containers
// (taken ones too: labels never change).
func poolContainers(t *testing.T, w *world, ctx context.Context) []string {
	t.Helper()
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+w.cfg.Instance)
	f.Add("label", labels.Pool)
	res, err := testenv.Client(w.eng).ContainerList(ctx, client.ContainerListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range res.Items {
		ids = append(ids, c.ID)
	}
	return ids
}

// homeMounts are the mounts on the host under the slots directory but the
// directory itself (a home on a slot).
func homeMounts(t *testing.T, slots string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], slots+"/") {
			out = append(out, fields[4])
		}
	}
	return out
}

// TestWarmServersSurviveDaemonKill: spawnd serve, as its own process, with
// an image env (the launcher comes from the daemon's files), is
// killed -9 with warm servers and taken ones running; the hub is
// restarted while more start on warm servers. The restarted daemon
// adopts every taken server as its user's (from its claim file: labels
// cannot say whose it became), keeps the warm ones warm and makes no new
// ones; the hub's servers answer through the proxy throughout; a stop
// after it leaves no home mounted on the host and never touches a home.
func TestWarmServersSurviveDaemonKill(t *testing.T) {
	testenv.Full(t, "a real engine and JupyterHub")
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	spec := filepath.Join(dir, "jh6.yaml")
	if err := os.WriteFile(spec, []byte(hubEnvSpec(6)), 0o644); err != nil {
		t.Fatal(err)
	}
	if lock, ok := lockedThisRun(hubEnvSpec(6)); ok {
		if err := os.WriteFile(envs.LockPath(spec), lock, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	if err != nil {
		t.Fatal(err)
	}
	w, tokFile := newProcessWorld(t, eng, venv, dir)
	inst := testenv.Instance(t, eng)
	w.cfg.Instance = inst // for poolContainers
	slots := testenv.SlotsDir(t)
	config := filepath.Join(dir, "spawnd.yaml")
	const size, taken = 4, 3
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`listen: %s
token_file: %s
instance: %s
homes_root: %s
slots_dir: %s
network: {name: spawnd-%s}
start_timeout: 3m
envs:
  # An image env (not built by this daemon): the launcher is mounted from
  # the daemon's files, whatever the image.
  jh6: {image: %s, lock_digest: %s, user: {name: jovyan, uid: 1000, gid: 100}, cmd: [jupyterhub-singleuser]}
profiles:
  small: {memory: 512m, cpus: 1}
pools:
  - {env: jh6, size: %d}
`, w.spawndAddr, tokFile, inst, w.homes, slots, inst, res.Tag, res.Lock.Digest, size)), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	sp := w.newSpawndProcess(config, c)
	sp.start()
	defer sp.kill9()
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()
	waitPool(t, c, size, 5*time.Minute)

	users := []string{"k0", "k1", "k2"}
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	for _, u := range users {
		if code := w.hubAPI("POST", "/users/"+u+"/server", nil, nil); code != 201 && code != 202 {
			t.Fatalf("start %s: %d", u, code)
		}
	}
	for _, u := range users {
		w.waitReady(u, "")
	}
	// Warm and taken ones both run when the daemon dies.
	waitPool(t, c, size, 5*time.Minute)
	before := map[string]bool{}
	for _, id := range poolContainers(t, w, ctx) {
		before[id] = true
	}
	if len(before) != size+taken {
		t.Fatalf("%d pool containers before the kill; want %d warm and %d taken", len(before), size, taken)
	}
	sp.kill9()
	sp.start()
	servers, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mine := map[string]api.Server{}
	for _, s := range servers {
		mine[s.User] = s
	}
	for _, u := range users {
		s, ok := mine[u]
		if !ok || s.State != api.StateRunning || !before[s.ContainerID] {
			t.Fatalf("after kill -9: %s is %+v (known %v); want its taken warm server, adopted", u, s, ok)
		}
	}
	if len(servers) != taken {
		t.Fatalf("after kill -9 the daemon knows %d servers; want the %d taken ones (warm ones are nobody's): %+v", len(servers), taken, servers)
	}
	p := waitPool(t, c, size, time.Minute)
	now := poolContainers(t, w, ctx)
	for _, id := range now {
		if !before[id] {
			t.Fatalf("after kill -9 the pool made a new warm server (%s); the %d ready ones should have been kept: %+v", id[:12], size, p)
		}
	}
	for _, u := range users {
		tok := w.userToken(u)
		note := map[string]any{"type": "file", "format": "text", "content": "after the kill\n"}
		if code := w.serverAPI(u, "", tok, "PUT", "/contents/after.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("%s writing through the proxy after the kill: %d", u, code)
		}
		if b, err := os.ReadFile(filepath.Join(w.homes, spawnd.Escape(u), "after.txt")); err != nil || string(b) != "after the kill\n" {
			t.Fatalf("%s's file after the kill: %q %v", u, b, err)
		}
	}
	// The hub restarts while two more start on warm servers: afterwards
	// each has one server, which answers through the proxy (a start the
	// restarted hub lost is asked for again, as its person would click).
	more := []string{"k3", "k4"}
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": more}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	for _, u := range more {
		w.hubAPI("POST", "/users/"+u+"/server", nil, nil)
	}
	w.stopHub()
	w.startHub(opts.Network.Gateway)
	for _, u := range more {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var hu hubUser
			w.hubAPI("GET", "/users/"+u, nil, &hu)
			if srv, ok := hu.Servers[""]; ok && srv.Ready {
				break
			} else if !ok {
				w.hubAPI("POST", "/users/"+u+"/server", nil, nil)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready after the hub restart\n%s", u, w.logTail())
			}
			time.Sleep(500 * time.Millisecond)
		}
		if code := w.serverAPI(u, "", w.userToken(u), "GET", "", nil, nil); code != 200 {
			t.Fatalf("%s through the proxy after the hub restart: %d", u, code)
		}
	}
	if servers, err := c.List(ctx); err != nil || len(servers) != taken+len(more) {
		t.Fatalf("after the hub restart spawnd runs %d servers (%v); want %d, one each", len(servers), err, taken+len(more))
	}
	for _, u := range more {
		w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil)
		w.waitStopped(u, "")
	}

	// A taken server whose claim is lost (a disk fault, a hand that
	// deleted it) is somebody's, and nobody knows whose: the restarted
	// daemon removes it rather than keep it as a warm server for the next
	// person. Its person's files stay in their home.
	lost := mine[users[2]].ContainerID
	ins, err := testenv.Client(eng).ContainerInspect(ctx, lost, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(slots, ins.Container.Config.Labels[labels.HomeSlot]+".claim")); err != nil {
		t.Fatal(err)
	}
	sp.kill9()
	sp.start()
	waitFor(t, "the claimless taken server removed", time.Minute, func() (bool, string) {
		return !contains(poolContainers(t, w, ctx), lost), "still running"
	})
	if _, err := os.Stat(filepath.Join(w.homes, spawnd.Escape(users[2]), "after.txt")); err != nil {
		t.Fatalf("the home of the claimless server's person: %v", err)
	}
	for _, u := range users {
		w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil)
	}
	for _, u := range users {
		w.waitStopped(u, "")
	}
	waitFor(t, "no home mounted on a slot after the stops", time.Minute, func() (bool, string) {
		m := homeMounts(t, slots)
		return len(m) == 0, strings.Join(m, "\n")
	})
	for _, u := range users {
		if _, err := os.Stat(filepath.Join(w.homes, spawnd.Escape(u), "after.txt")); err != nil {
			t.Fatalf("%s's home after the stop: %v", u, err)
		}
	}
}
