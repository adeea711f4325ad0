package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// The hub figures drive a real JupyterHub (from the venv scripts/hub-venvs
// makes, at the team env's jupyterhub version) with SpawndSpawner and
// configurable-http-proxy, only through the Hub's REST API and the proxy, as
// a class of users would. The raw floor is the same image and command started
// with the engine client directly (create + start, bind-mounted home,
// published port, the env the hub would give), until /user/NAME/api answers
// through the published port. Both sides are measured in the same run and
// interleaved.

// hubWorld is spawnd in-process plus a JupyterHub process.
type hubWorld struct {
	b          *bench
	dir        string
	d          *world
	hub        *exec.Cmd
	hubLog     *os.File
	hubPort    int
	proxyPort  int
	apiPort    int
	adminToken string
	gateway    string
	image      string
	network    string
	rawN       int
}

// hubVenv is the JupyterHub the hub figures use: the team env's version.
func hubVenv(repo string) (string, string) {
	spec, err := os.ReadFile(filepath.Join(repo, "envs", "team.yaml"))
	if err != nil {
		log.Fatal(err)
	}
	version := ""
	for _, l := range strings.Split(string(spec), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "- jupyterhub=="); ok {
			version = strings.Fields(v)[0]
		}
	}
	root := os.Getenv("HUB_VENVS")
	if root == "" {
		root = "/var/lib/spawnd-test/hubs"
	}
	venv := filepath.Join(root, "jh"+strings.SplitN(version, ".", 2)[0])
	out, err := exec.Command(filepath.Join(venv, "bin", "jupyterhub"), "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != version {
		log.Fatalf("hub figures need JupyterHub %s in %s (run scripts/hub-venvs): %q %v", version, venv, out, err)
	}
	return venv, version
}

func (b *bench) newHubWorld(mods ...func(*daemon.Config)) *hubWorld {
	venv, version := hubVenv(b.repo)
	// The team env, built as the README does (a scratch copy keeps the lock out of the tree).
	spec := filepath.Join(b.dir, "team.yaml")
	src, _ := os.ReadFile(filepath.Join(b.repo, "envs", "team.yaml"))
	if err := os.WriteFile(spec, src, 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("  building the team env (JupyterHub %s single-user)…", version)
	res, err := images.Build(b.ctx, b.eng, spec, images.Options{CACerts: hostCACerts()})
	if err != nil {
		log.Fatal(err)
	}
	w := &hubWorld{b: b, dir: b.dir, image: res.Tag, adminToken: fmt.Sprintf("%032x", time.Now().UnixNano()),
		hubPort: freePort(), proxyPort: freePort(), apiPort: freePort()}
	w.d = b.newWorld(func(c *daemon.Config) {
		c.Envs = map[string]spawnd.EnvConfig{"team": {Spec: spec}}
		c.Profiles = nil
		c.StartTimeout = 10 * time.Minute
		for _, m := range mods {
			m(c)
		}
	})
	w.network = w.d.cfg.Network.Name
	opts, err := w.d.client.Options(b.ctx)
	if err != nil {
		log.Fatal(err)
	}
	w.gateway = opts.Network.Gateway
	w.hubLog, _ = os.Create(filepath.Join(b.dir, "hub.log"))
	conf := filepath.Join(b.dir, "jupyterhub_config.py")
	body := fmt.Sprintf(`
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = %d
c.JupyterHub.hub_ip = %q
c.JupyterHub.hub_port = %d
c.JupyterHub.db_url = "sqlite:///%s/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "%s/cookie_secret"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d"
c.ConfigurableHTTPProxy.auth_token = "proxy-%s"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "bench-password-unused"
c.JupyterHub.cleanup_servers = True
c.JupyterHub.spawner_class = "spawnd"
c.SpawndSpawner.api_url = "http://%s"
c.SpawndSpawner.token = %q
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 120
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{"name": "bench", "api_token": %q}]
c.JupyterHub.load_roles = [{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "read:servers", "access:servers"]}]
`, w.proxyPort, w.gateway, w.hubPort, b.dir, b.dir, w.apiPort, w.adminToken, w.d.d.Addr().String(), w.d.cfg.Token, w.adminToken)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		log.Fatal(err)
	}
	w.hub = exec.Command(filepath.Join(venv, "bin", "jupyterhub"), "-f", conf)
	w.hub.Dir = b.dir
	w.hub.Env = append(os.Environ(), "NODE_PATH=/usr/share/nodejs", "PATH="+filepath.Join(venv, "bin")+":"+os.Getenv("PATH"))
	w.hub.Stdout, w.hub.Stderr = w.hubLog, w.hubLog
	w.hub.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := w.hub.Start(); err != nil {
		log.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for w.hubGET("/", nil) != 200 {
		if time.Now().After(deadline) {
			log.Fatalf("the hub did not come up; see %s", w.hubLog.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return w
}

func (w *hubWorld) close() {
	_ = syscall.Kill(-w.hub.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = w.hub.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-w.hub.Process.Pid, syscall.SIGKILL)
		<-done
	}
	w.b.closeWorld(w.d)
	removeByLabel(w.b.ctx, w.b.eng, labels.BenchRaw, w.d.cfg.Instance)
}

var hubHTTP = &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

func (w *hubWorld) hubCall(method, path string, body, out any) int {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d/hub/api%s", w.proxyPort, path), rd)
	req.Header.Set("Authorization", "token "+w.adminToken)
	resp, err := hubHTTP.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(b, out)
	}
	return resp.StatusCode
}

func (w *hubWorld) hubGET(path string, out any) int { return w.hubCall("GET", path, nil, out) }

// apiAnswers is true when a single-user server's /api answers with its version.
func apiAnswers(url string) bool {
	resp, err := hubHTTP.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && bytes.Contains(b, []byte(`"version"`))
}

// spawnViaHub asks the hub for user's server and returns the time until
// /user/NAME/api answers through the proxy, or an error. It waits the way a
// browser on the spawn page does: on the hub's progress stream (one open
// request per user), not by polling the hub, which would load the hub's
// single event loop with work no user causes.
func (w *hubWorld) spawnViaHub(user string, deadline time.Duration) (time.Duration, error) {
	t0 := time.Now()
	if code := w.hubCall("POST", "/users/"+user+"/server", nil, nil); code != 201 && code != 202 {
		return 0, fmt.Errorf("POST /users/%s/server: HTTP %d", user, code)
	}
	ctx, cancel := context.WithTimeout(w.b.ctx, deadline)
	defer cancel()
	if err := w.followProgress(ctx, user); err != nil {
		return 0, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/user/%s/api", w.proxyPort, user)
	for !apiAnswers(url) {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("%s ready in the hub but /api does not answer through the proxy", user)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(t0), nil
}

// followProgress reads the hub's progress stream of user's start until it
// says ready (nil) or failed (an error with the hub's message).
func (w *hubWorld) followProgress(ctx context.Context, user string) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/hub/api/users/%s/server/progress", w.proxyPort, user), nil)
	req.Header.Set("Authorization", "token "+w.adminToken)
	resp, err := streamHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s: progress: %w", user, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: progress: HTTP %d", user, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Ready   bool   `json:"ready"`
			Failed  bool   `json:"failed"`
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(data), &ev) != nil {
			continue
		}
		if ev.Ready {
			return nil
		}
		if ev.Failed {
			return fmt.Errorf("%s: the hub says the start failed: %s", user, ev.Message)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: not ready: %w", user, ctx.Err())
	}
	return fmt.Errorf("%s: the progress stream ended without ready (%v)", user, sc.Err())
}

var streamHTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}

// stopViaHub stops user's server and waits until the hub no longer lists it.
func (w *hubWorld) stopViaHub(user string) error {
	w.hubCall("DELETE", "/users/"+user+"/server", nil, nil)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var u struct {
			Servers map[string]any `json:"servers"`
		}
		if w.hubGET("/users/"+user, &u) == 200 && len(u.Servers) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not stop", user)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *hubWorld) createUsers(names []string) {
	if code := w.hubCall("POST", "/users", map[string]any{"usernames": names}, nil); code != 201 && code != 409 {
		log.Fatalf("creating users: HTTP %d", code)
	}
}

// rawStart is the floor: the container spawnd starts (the same image and
// command, the profile's memory, CPU and pids limits, the hardening, a
// home bind-mounted, the port published on loopback), started with the
// engine client, with the env a hub would give and a real token of
// user's, until /user/NAME/api answers through the published port. It
// returns the time and the container id.
func (w *hubWorld) rawStart(user string) (time.Duration, string, error) {
	var tok struct {
		Token string `json:"token"`
	}
	w.hubCall("POST", "/users/"+user+"/tokens", map[string]any{"note": "bench raw"}, &tok)
	home := filepath.Join(w.d.cfg.HomesRoot, "raw-"+user)
	_ = os.MkdirAll(home, 0o700)
	_ = os.Chown(home, 1000, 100)
	hubAPI := fmt.Sprintf("http://%s:%d/hub/api", w.gateway, w.hubPort)
	prefix := "/user/" + user + "/"
	env := []string{
		"HOME=/home/jovyan", "USER=jovyan", "JUPYTERHUB_API_TOKEN=" + tok.Token, "JPY_API_TOKEN=" + tok.Token,
		"JUPYTERHUB_API_URL=" + hubAPI, "JUPYTERHUB_ACTIVITY_URL=" + hubAPI + "/users/" + user + "/activity",
		"JUPYTERHUB_USER=" + user, "JUPYTERHUB_SERVER_NAME=", "JUPYTERHUB_BASE_URL=/", "JUPYTERHUB_SERVICE_PREFIX=" + prefix,
		"JUPYTERHUB_SERVICE_URL=http://0.0.0.0:8888" + prefix, "JUPYTERHUB_CLIENT_ID=jupyterhub-user-" + user,
		"JUPYTERHUB_OAUTH_CALLBACK_URL=" + prefix + "oauth_callback", "JUPYTERHUB_HOST=",
	}
	port, _ := network.ParsePort("8888/tcp")
	cfg := &container.Config{Image: w.image, Env: env, User: "1000:100", WorkingDir: "/home/jovyan",
		Labels: map[string]string{labels.BenchRaw: w.d.cfg.Instance, labels.Test: "1"}, ExposedPorts: network.PortSet{port: {}}}
	init := true
	prof := w.d.d.Manager().Config().Profiles["default"] // the profile spawnd starts these users with
	pids := prof.Pids
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(w.network), Init: &init,
		CapDrop: []string{"ALL"}, SecurityOpt: []string{"no-new-privileges:true"},
		Resources:    container.Resources{PidsLimit: &pids, Memory: prof.MemoryBytes(), NanoCPUs: int64(prof.CPUs * 1e9)},
		Mounts:       []mount.Mount{{Type: mount.TypeBind, Source: home, Target: "/home/jovyan"}},
		PortBindings: network.PortMap{port: {{HostIP: netip.MustParseAddr("127.0.0.1")}}}}
	cli := testenv.Client(w.b.eng)
	t0 := time.Now()
	w.rawN++
	created, err := cli.ContainerCreate(w.b.ctx, client.ContainerCreateOptions{Name: fmt.Sprintf("spawnd-raw-%s-%s-%d", w.d.cfg.Instance, user, w.rawN), Config: cfg, HostConfig: hc})
	if err != nil {
		return 0, "", err
	}
	if _, err := cli.ContainerStart(w.b.ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return 0, created.ID, err
	}
	ins, err := cli.ContainerInspect(w.b.ctx, created.ID, client.ContainerInspectOptions{})
	if err != nil {
		return 0, created.ID, err
	}
	hostPort := ""
	for _, b := range ins.Container.NetworkSettings.Ports[port] {
		hostPort = b.HostPort
	}
	url := fmt.Sprintf("http://127.0.0.1:%s%sapi", hostPort, prefix)
	for !apiAnswers(url) {
		if time.Since(t0) > 10*time.Minute {
			return 0, created.ID, fmt.Errorf("raw %s not answering", user)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(t0), created.ID, nil
}

func (w *hubWorld) rawStop(ids []string) time.Duration {
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(w.b.ctx, 2*time.Minute)
			defer cancel()
			// As spawnd stops: SIGTERM, SIGKILL after the same grace (3 s), then remove.
			grace := 3
			_, _ = testenv.Client(w.b.eng).ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &grace})
			_, _ = testenv.Client(w.b.eng).ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
		}()
	}
	wg.Wait()
	return time.Since(t0)
}

// bootCPU is a container's CPU time so far (cgroup accounting through the engine's stats).
func (w *hubWorld) bootCPU(id string) time.Duration {
	res, err := testenv.Client(w.b.eng).ContainerStats(w.b.ctx, id, client.ContainerStatsOptions{Stream: false, IncludePreviousSample: false})
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if json.NewDecoder(res.Body).Decode(&st) != nil {
		return 0
	}
	return time.Duration(st.CPUStats.CPUUsage.TotalUsage)
}

// hubFigures: sequential spawn (n rounds interleaved with the raw floor),
// class starts of 20, 50 and 100, stop of 50, and boot CPU per server.
func (b *bench) hubFigures() {
	w := b.newHubWorld()
	defer w.close()
	rounds := max(b.rounds, 20)
	var users []string
	for i := range rounds {
		users = append(users, fmt.Sprintf("seq%03d", i))
	}
	w.createUsers(users)
	// Warm up both sides once (image pages in the page cache, the hub's first spawn).
	if _, err := w.spawnViaHub("seq000", 5*time.Minute); err != nil {
		log.Fatalf("warm-up spawn: %v; see %s", err, w.hubLog.Name())
	}
	_ = w.stopViaHub("seq000")
	if _, id, err := w.rawStart("seq000"); err != nil {
		log.Fatalf("warm-up raw: %v", err)
	} else {
		w.rawStop([]string{id})
	}

	var cpuHub []time.Duration
	var hubErrs, rawErrs int
	sp, rw := b.interleaveN(rounds, func(i int) time.Duration {
		d, err := w.spawnViaHub(users[i], 5*time.Minute)
		if err != nil {
			log.Printf("  %v", err)
			hubErrs++
			d = failed // a failure is counted, never a time
		}
		if s, err := w.d.client.Status(b.ctx, users[i], ""); err == nil {
			cpuHub = append(cpuHub, w.bootCPU(s.ContainerID))
		}
		_ = w.stopViaHub(users[i])
		return d
	}, func(i int) time.Duration {
		d, id, err := w.rawStart(users[i])
		if err != nil {
			log.Printf("  raw: %v", err)
			rawErrs++
			d = failed
		}
		w.rawStop([]string{id})
		return d
	})
	sp, rw = succeeded(sp), succeeded(rw)
	if len(sp) == 0 || len(rw) == 0 {
		log.Fatalf("hub: sequential spawn: every sample failed (%d hub, %d raw errors); see %s", hubErrs, rawErrs, w.hubLog.Name())
	}
	sm, s95 := stats(sp)
	rm, r95 := stats(rw)
	b.add(row{figure: fmt.Sprintf("hub: sequential spawn, POST → /user/NAME/api through the proxy (p50, p95; n=%d each, interleaved)", rounds),
		spawnd: ms(sm) + ", " + ms(s95), raw: ms(rm) + ", " + ms(r95) + " (engine create+start → /api)",
		ratio: fmt.Sprintf("%.2f×", ratio(sm, rm)), target: "p50 ≤ 1.10×, 0 errors", pass: ratio(sm, rm) <= 1.10 && hubErrs == 0,
		note: fmt.Sprintf("%d hub errors, %d raw errors (failed samples are not times)", hubErrs, rawErrs)})
	if len(cpuHub) > 0 {
		cm, c95 := stats(cpuHub)
		b.add(row{figure: fmt.Sprintf("hub: boot CPU per single-user server, cgroup CPU time when /api first answers (p50, p95; n=%d)", len(cpuHub)),
			spawnd: fmt.Sprintf("%.2f s, %.2f s", cm.Seconds(), c95.Seconds()), raw: "-", ratio: "-", target: "report", pass: true})
	}

	for _, n := range b.classes {
		b.hubClass(w, n)
	}
}

// hubClass starts n users at once through the hub, and n raw containers at
// once, in alternating order; and for n = 50 times stopping them all.
func (b *bench) hubClass(w *hubWorld, n int) {
	var users []string
	for i := range n {
		users = append(users, fmt.Sprintf("c%d-%03d", n, i))
	}
	w.createUsers(users)
	type result struct {
		ok   int
		errs []string
		each []time.Duration
		wall time.Duration
		ids  []string
	}
	// runAll starts every user at once with start and collects the outcome.
	runAll := func(start func(u string) (time.Duration, string, error)) result {
		var mu sync.Mutex
		var r result
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, id, err := start(u)
				mu.Lock()
				defer mu.Unlock()
				if id != "" {
					r.ids = append(r.ids, id)
				}
				if err != nil {
					r.errs = append(r.errs, err.Error())
					return
				}
				r.ok++
				r.each = append(r.each, d)
			}()
		}
		wg.Wait()
		r.wall = time.Since(t0)
		return r
	}
	runHub := func() result {
		return runAll(func(u string) (time.Duration, string, error) {
			d, err := w.spawnViaHub(u, 10*time.Minute)
			return d, "", err
		})
	}
	runRaw := func() result { return runAll(w.rawStart) }
	// The raw floor again with spawnd's admission limit: at most
	// max_concurrent_starts booting at once, each from create until its
	// port answers, as spawnd admits them. Against it, spawnd's wall is what
	// spawnd costs; against the all-at-once floor, what admission buys.
	limit := w.d.d.Manager().Config().MaxConcurrentStarts
	admit := make(chan struct{}, limit)
	runRawAdmitted := func() result {
		return runAll(func(u string) (time.Duration, string, error) {
			admit <- struct{}{}
			defer func() { <-admit }()
			return w.rawStart(u)
		})
	}
	stopHub := func() time.Duration {
		t0 := time.Now()
		for _, u := range users {
			go w.hubCall("DELETE", "/users/"+u+"/server", nil, nil)
		}
		// One listing of the hub's active users every 100 ms, until none of ours is left.
		mine := map[string]bool{}
		for _, u := range users {
			mine[u] = true
		}
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			var active []struct {
				Name    string         `json:"name"`
				Servers map[string]any `json:"servers"`
			}
			if w.hubGET("/users?state=active&limit=1000", &active) == 200 {
				left := 0
				for _, a := range active {
					if mine[a.Name] && len(a.Servers) > 0 {
						left++
					}
				}
				if left == 0 {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Since(t0)
	}
	var hr, rr, ra result
	var hubStop, rawStop time.Duration
	if n%2 == 0 && n != 50 || n == 100 {
		rr = runRaw()
		rawStop = w.rawStop(rr.ids)
		hr = runHub()
		hubStop = stopHub()
		ra = runRawAdmitted()
		w.rawStop(ra.ids)
	} else {
		ra = runRawAdmitted()
		w.rawStop(ra.ids)
		hr = runHub()
		hubStop = stopHub()
		rr = runRaw()
		rawStop = w.rawStop(rr.ids)
	}
	for _, e := range hr.errs[:min(3, len(hr.errs))] {
		log.Printf("  hub: %s", e)
	}
	hm, _ := stats(hr.each)
	rm, _ := stats(rr.each)
	am, _ := stats(ra.each)
	target := "all ready, 0 errors; wall ≤ 1.05×"
	pass := hr.ok == n && hr.wall <= rr.wall*105/100
	if n > 20 {
		target = "all ready, 0 errors; wall < raw (CPU-aware admission)"
		pass = hr.ok == n && hr.wall < rr.wall
	}
	b.add(row{figure: fmt.Sprintf("hub: class start, %d users at once through the hub (ready; p50 per user; wall) vs the raw floor all at once", n),
		spawnd: fmt.Sprintf("%d/%d; %s; %s", hr.ok, n, ms(hm), ms(hr.wall)),
		raw:    fmt.Sprintf("%d/%d; %s; %s (all at once, same container)", rr.ok, n, ms(rm), ms(rr.wall)),
		ratio:  fmt.Sprintf("%.2f× wall", ratio(hr.wall, rr.wall)), target: target, pass: pass,
		note: fmt.Sprintf("%d hub errors; what admission buys: raw with admission %s vs all at once %s", len(hr.errs), ms(ra.wall), ms(rr.wall))})
	b.add(row{figure: fmt.Sprintf("hub: class start, %d users through the hub vs the raw floor with the same admission limit (%d at once; wall)", n, limit),
		spawnd: ms(hr.wall), raw: fmt.Sprintf("%d/%d; %s; %s (admitted, same container)", ra.ok, n, ms(am), ms(ra.wall)),
		ratio: fmt.Sprintf("%.2f× wall", ratio(hr.wall, ra.wall)), target: "≤ 1.10× (what spawnd and the hub cost)", pass: hr.ok == n && ra.ok == n && hr.wall <= ra.wall*110/100})
	if n == 50 {
		b.add(row{figure: "hub: stop 50 at once through the hub, until the hub lists none", spawnd: ms(hubStop),
			raw: ms(rawStop) + " (engine stop+rm of 50, parallel)", ratio: fmt.Sprintf("%.2f×", ratio(hubStop, rawStop)),
			target: "≤ 1.1×", pass: hubStop <= rawStop*110/100})
	}
}

// interleaveN is interleave with an explicit round count.
// failed marks a sample whose operation failed; succeeded drops them, so
// a failure is never a time (it is counted on its own).
const failed = time.Duration(-1)

func succeeded(ds []time.Duration) []time.Duration {
	out := ds[:0:0]
	for _, d := range ds {
		if d != failed {
			out = append(out, d)
		}
	}
	return out
}

func (b *bench) interleaveN(n int, sp, raw func(i int) time.Duration) ([]time.Duration, []time.Duration) {
	saved := b.rounds
	b.rounds = n
	defer func() { b.rounds = saved }()
	return b.interleave(sp, raw)
}

// hostCACerts are /usr/local/share/ca-certificates/*.crt (scripts/host-ca-files).
func hostCACerts() []byte {
	files, _ := filepath.Glob("/usr/local/share/ca-certificates/*.crt")
	var out []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil {
			out = append(append(out, bytes.TrimSpace(b)...), '\n')
		}
	}
	return out
}

func removeByLabel(ctx context.Context, eng *docker.Engine, label, value string) {
	f := client.Filters{}
	f.Add("label", label+"="+value)
	res, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		_, _ = testenv.Client(eng).ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
	}
}
