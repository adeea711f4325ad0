package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

func ensureBusybox(ctx context.Context, eng *docker.Engine) string {
	img, err := testenv.BuildBusybox(ctx, eng)
	if err != nil {
		log.Fatal(err)
	}
	return img
}

func removeInstance(ctx context.Context, eng *docker.Engine, inst, network string) {
	testenv.RemoveInstance(eng, inst+"raw")
	testenv.RemoveInstance(eng, inst)
	_, _ = testenv.Client(eng).NetworkRemove(ctx, network, client.NetworkRemoveOptions{})
}

// parallel runs fn(0..n-1), at most 8 at a time, and waits for them all.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}()
	}
	wg.Wait()
}

// interleave runs b.rounds rounds of a spawnd measurement and a raw engine
// measurement, alternating which goes first, and returns both series.
func (b *bench) interleave(spawnd, raw func(i int) time.Duration) (sp, rw []time.Duration) {
	for i := range b.rounds {
		if i%2 == 0 {
			rw = append(rw, raw(i))
			sp = append(sp, spawnd(i))
		} else {
			sp = append(sp, spawnd(i))
			rw = append(rw, raw(i))
		}
	}
	return sp, rw
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// spawnOverhead: API start -> container running, against the engine's
// create+start of the same container, interleaved.
func (b *bench) spawnOverhead() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	sp, raw := b.interleave(func(i int) time.Duration {
		user := fmt.Sprintf("user%d", i)
		began := time.Now()
		if _, err := w.client.Start(b.ctx, user, "", api.StartRequest{}); err != nil {
			log.Fatal(err)
		}
		took := time.Since(began)
		_, _ = w.client.Stop(b.ctx, user, "")
		return took
	}, func(i int) time.Duration {
		id, took, _ := b.rawStart(b.rawSpec(w, fmt.Sprintf("s%d", i)))
		_ = b.rawRemove(id, 0)
		return took
	})
	sm, s95 := stats(sp)
	rm, r95 := stats(raw)
	r := ratio(sm, rm)
	b.add(row{figure: fmt.Sprintf("spawn: API start → running (median, %s; n=%d each, interleaved)", tailName(b.rounds), b.rounds),
		spawnd: ms(sm) + ", " + ms(s95), raw: ms(rm) + ", " + ms(r95),
		ratio: fmt.Sprintf("%.2f×", r), target: "≤ 1.10×", pass: r <= 1.10})
}

func httpOK(host string, port int) bool {
	c := http.Client{Timeout: 500 * time.Millisecond}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/", host, port))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 500
}

func waitHTTP(host string, port int) {
	deadline := time.Now().Add(30 * time.Second)
	for !httpOK(host, port) {
		if time.Now().After(deadline) {
			log.Fatalf("%s:%d never answered", host, port)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// spawnToHTTP: API start -> the server answers HTTP 200, against the
// engine's create+start -> HTTP 200; both poll the published port alike.
func (b *bench) spawnToHTTP() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	sp, raw := b.interleave(func(i int) time.Duration {
		user := fmt.Sprintf("web%d", i)
		began := time.Now()
		s, err := w.client.Start(b.ctx, user, "", api.StartRequest{})
		if err != nil {
			log.Fatal(err)
		}
		waitHTTP(s.Host, s.Port)
		took := time.Since(began)
		_, _ = w.client.Stop(b.ctx, user, "")
		return took
	}, func(i int) time.Duration {
		began := time.Now()
		id, _, hostPort := b.rawStart(b.rawSpec(w, fmt.Sprintf("h%d", i)))
		waitHTTP("127.0.0.1", hostPort)
		took := time.Since(began)
		_ = b.rawRemove(id, 0)
		return took
	})
	sm, s95 := stats(sp)
	rm, r95 := stats(raw)
	r := ratio(sm, rm)
	b.add(row{figure: fmt.Sprintf("spawn: API start → HTTP 200 (median, %s; n=%d each, interleaved)", tailName(b.rounds), b.rounds), spawnd: ms(sm) + ", " + ms(s95), raw: ms(rm) + ", " + ms(r95),
		ratio: fmt.Sprintf("%.2f×", r), target: "≤ 1.05×", pass: r <= 1.05, note: "busybox httpd stand-in"})
}

// classStart: N different users at once until every container runs, against
// N raw create+starts in parallel; three trials each, interleaved, medians.
func (b *bench) classStart() {
	for _, n := range []int{20, 50} {
		w := b.newWorld(nil)
		var sp, raw []time.Duration
		var fails, rawFails atomic.Int32
		spTrial := func(trial int) {
			var wg sync.WaitGroup
			began := time.Now()
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := w.client.Start(b.ctx, fmt.Sprintf("t%d-student%02d", trial, i), "", api.StartRequest{}); err != nil {
						fails.Add(1)
					}
				}()
			}
			wg.Wait()
			sp = append(sp, time.Since(began))
			for i := range n {
				_, _ = w.client.Stop(b.ctx, fmt.Sprintf("t%d-student%02d", trial, i), "")
			}
		}
		rawTrial := func(trial int) {
			specs := make([]backend.ContainerSpec, n)
			for i := range n {
				specs[i] = b.rawSpec(w, fmt.Sprintf("t%d-c%02d", trial, i))
			}
			var wg sync.WaitGroup
			began := time.Now()
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := b.rawCreate(specs[i]); err != nil {
						rawFails.Add(1)
					}
				}()
			}
			wg.Wait()
			raw = append(raw, time.Since(began))
			testenv.RemoveInstance(b.eng, w.cfg.Instance+"raw")
		}
		for trial := range 3 {
			if trial%2 == 0 {
				rawTrial(trial)
				spTrial(trial)
			} else {
				spTrial(trial)
				rawTrial(trial)
			}
		}
		b.closeWorld(w)
		sm, _ := stats(sp)
		rm, _ := stats(raw)
		r := ratio(sm, rm)
		b.add(row{figure: fmt.Sprintf("class start: %d users at once, all running (median of 3 trials each, interleaved)", n), spawnd: ms(sm), raw: ms(rm),
			ratio: fmt.Sprintf("%.2f×", r), target: "≤ 1.15×, 0 failures", pass: r <= 1.15 && fails.Load() == 0 && rawFails.Load() == 0,
			note: fmt.Sprintf("%d spawnd failures, %d raw failures", fails.Load(), rawFails.Load())})
	}
}

// sameServerBurst: 50 concurrent starts of one server make one container.
func (b *bench) sameServerBurst() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	var wg sync.WaitGroup
	var errs atomic.Int32
	began := time.Now()
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.client.Start(b.ctx, "burst", "", api.StartRequest{}); err != nil {
				errs.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(began)
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+w.cfg.Instance)
	res, _ := testenv.Client(b.eng).ContainerList(b.ctx, client.ContainerListOptions{All: true, Filters: f})
	n := len(res.Items)
	b.add(row{figure: "burst: 50 concurrent starts of one server", spawnd: fmt.Sprintf("%d container(s) in %s", n, ms(took)), raw: "-",
		ratio: "-", target: "exactly 1", pass: n == 1 && errs.Load() == 0})
}

// statusLatency: status p99 at 500 requests/s with 100 servers running,
// against an engine inspect per poll (what DockerSpawner does).
func (b *bench) statusLatency() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	ids := make([]string, 100)
	parallel(100, func(i int) {
		s, err := w.client.Start(b.ctx, fmt.Sprintf("s%03d", i), "", api.StartRequest{})
		if err != nil {
			log.Fatal(err)
		}
		ids[i] = s.ContainerID
	})
	load := func(call func(i int) error) []time.Duration {
		const rate, dur = 500, 4 * time.Second
		total := int(rate * dur.Seconds())
		lat := make([]time.Duration, total)
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		var lwg sync.WaitGroup
		for i := range total {
			<-tick.C
			lwg.Add(1)
			go func() {
				defer lwg.Done()
				began := time.Now()
				if err := call(i); err != nil {
					log.Fatal(err)
				}
				lat[i] = time.Since(began)
			}()
		}
		lwg.Wait()
		return lat
	}
	sp := load(func(i int) error { _, err := w.client.Status(b.ctx, fmt.Sprintf("s%03d", i%100), ""); return err })
	raw := load(func(i int) error { return b.rawInspect(ids[i%100]) })
	s99, r99 := pct(sp, 0.99), pct(raw, 0.99)
	b.add(row{figure: "status: p99 at 500 req/s, 100 servers (2,000 requests)", spawnd: ms(s99), raw: ms(r99) + " (inspect)",
		ratio: fmt.Sprintf("%.2f×", ratio(s99, r99)), target: "≤ 5 ms", pass: s99 <= 5*time.Millisecond})
}

// reconcile: a full reconcile with 300 running, labelled containers: the
// listing it answers after, and the inspects it then runs in the background
// (counted, and timed until the last), against the engine's listing of the
// same containers while spawnd is idle; five rounds, alternating which side
// goes first.
func (b *bench) reconcile() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	lbl := func(i int) map[string]string {
		return map[string]string{labels.Managed: "true", labels.Instance: w.cfg.Instance,
			labels.User: fmt.Sprintf("r%03d", i), labels.Server: "", labels.Port: "8888"}
	}
	parallel(300, func(i int) {
		_, err := b.eng.Run(b.ctx, backend.ContainerSpec{Name: fmt.Sprintf("spawnd-%s-r%03d", w.cfg.Instance, i), Image: b.image,
			Labels: lbl(i), Port: 8888, Network: w.cfg.Network.Name, PidsLimit: 64, Memory: 64 << 20})
		if err != nil {
			log.Fatal(err)
		}
	})
	time.Sleep(3 * time.Second) // the world's own daemon has followed the starts; now it is idle
	// A manager of its own on a runtime that counts inspects; it does not
	// follow events, so nothing but the reconcile talks to the engine.
	rt := &countingInspects{Runtime: b.eng}
	mgr, err := spawnd.NewManager(w.cfg.Config, backend.Set{Runtime: rt}, nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer mgr.Close()
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+w.cfg.Instance)
	var sp, full, raw []time.Duration
	var inspects []int64
	for round := range 5 {
		reconcile := func() {
			before := rt.n.Load()
			began := time.Now()
			if err := mgr.Reconcile(b.ctx); err != nil {
				log.Fatal(err)
			}
			sp = append(sp, time.Since(began))
			deadline := time.Now().Add(time.Minute)
			for rt.n.Load()-before < 300 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			full = append(full, time.Since(began))
			time.Sleep(200 * time.Millisecond) // let the last inspects' bookkeeping finish
			inspects = append(inspects, rt.n.Load()-before)
		}
		list := func() {
			began := time.Now()
			if _, err := testenv.Client(b.eng).ContainerList(b.ctx, client.ContainerListOptions{All: true, Filters: f}); err != nil {
				log.Fatal(err)
			}
			raw = append(raw, time.Since(began))
		}
		if round%2 == 0 {
			reconcile()
			list()
		} else {
			list()
			reconcile()
		}
	}
	sm, _ := stats(sp)
	fm, _ := stats(full)
	rm, _ := stats(raw)
	if l, _ := mgr.List(); len(l) != 300 {
		log.Printf("  reconcile saw %d servers, want 300", len(l))
	}
	b.add(row{figure: "reconcile: 300 running containers (median; n=5 each, alternating)", spawnd: ms(sm) + " to answer; " + ms(fm) + " with its inspects",
		raw:   ms(rm) + " (list only, spawnd idle)",
		ratio: fmt.Sprintf("%.1f×", ratio(sm, rm)), target: "≤ 100 ms", pass: sm <= 100*time.Millisecond,
		note: fmt.Sprintf("%v background inspects per round", inspects)})
}

func (b *bench) binary() string {
	if b.binPath != "" {
		return b.binPath
	}
	b.binPath = filepath.Join(b.dir, "spawnd")
	cmd := exec.Command("go", "build", "-o", b.binPath, "./cmd/spawnd")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatal(err)
	}
	return b.binPath
}

type proc struct {
	cmd    *exec.Cmd
	client *api.Client
	cfg    string
	inst   string
}

func (b *bench) startProc(inst string, port int) *proc {
	homes := filepath.Join(b.dir, inst)
	_ = os.MkdirAll(homes, 0o755)
	cfg := filepath.Join(b.dir, inst+".yaml")
	yaml := fmt.Sprintf("listen: 127.0.0.1:%d\ntoken: bench-token-0123456789abcdef\ninstance: %s\nhomes_root: %s\nnetwork: {name: spawnd-%s}\nlog_level: warn\nenvs:\n  team:\n    image: %s\n    user: {name: jovyan, uid: 1000, gid: 100}\n",
		port, inst, homes, inst, b.image)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(b.binary(), "serve", "--config", cfg)
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	c, _ := api.NewClient(fmt.Sprintf("127.0.0.1:%d", port), "bench-token-0123456789abcdef")
	return &proc{cmd: cmd, client: c, cfg: cfg, inst: inst}
}

func (p *proc) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL); _ = p.cmd.Wait() }

// waitList polls until the daemon answers with want servers.
func (p *proc) waitList(want int) time.Duration {
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := p.client.List(ctx)
		cancel()
		if err == nil && len(l) == want {
			return time.Since(began)
		}
		if time.Since(began) > 30*time.Second {
			log.Fatalf("daemon never listed %d servers (%d, %v)", want, len(l), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func rssKB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}

func freePort() int {
	p, err := testenv.PickPort()
	if err != nil {
		log.Fatal(err)
	}
	return p
}

// memory: the daemon's RSS idle and per managed server (50 real containers),
// and heap per server with 1,000 through an in-memory runtime.
func (b *bench) memory() {
	inst := fmt.Sprintf("benchmem%d", time.Now().UnixNano()%1e6)
	p := b.startProc(inst, freePort())
	defer func() { p.kill(); removeInstance(b.ctx, b.eng, inst, "spawnd-"+inst) }()
	p.waitList(0)
	time.Sleep(500 * time.Millisecond)
	idle := rssKB(p.cmd.Process.Pid)
	// One server after another, then a pause: the steady state, not the
	// garbage of a burst that the Go runtime has yet to give back.
	startN := func(from, to int) int {
		for i := from; i < to; i++ {
			if _, err := p.client.Start(b.ctx, fmt.Sprintf("m%03d", i), "", api.StartRequest{}); err != nil {
				log.Fatal(err)
			}
		}
		time.Sleep(5 * time.Second)
		return rssKB(p.cmd.Process.Pid)
	}
	rss50 := startN(0, 50)
	rss100 := startN(50, 100)
	first := float64(rss50-idle) / 50
	per := float64(rss100-rss50) / 50
	b.add(row{figure: "memory: daemon RSS idle", spawnd: fmt.Sprintf("%.1f MB", float64(idle)/1024), raw: "-", ratio: "-",
		target: "≤ 25 MB", pass: idle <= 25*1024})
	// The target was set on the first 50 servers; it is judged there, as
	// first defined, even though the cost is mostly one-off (see the notes).
	b.add(row{figure: "memory: RSS per server, 0 → 50 real containers", spawnd: fmt.Sprintf("%.0f KB", first), raw: "-", ratio: "-",
		target: "≤ 50 KB", pass: first <= 50,
		note: fmt.Sprintf("50 → 100: %.1f KB/server; the first 50 include one-off pools and buffers", per)})

	heap := heapPerServer(1000)
	b.add(row{figure: "memory: heap per server (1,000, in-memory runtime)", spawnd: fmt.Sprintf("%.1f KB", heap), raw: "-", ratio: "-",
		target: "≤ 50 KB", pass: heap <= 50})
}

// restart: after kill -9 with 50 servers, time until the new daemon answers
// with all 50 adopted.
func (b *bench) restart() {
	inst := fmt.Sprintf("benchrs%d", time.Now().UnixNano()%1e6)
	port := freePort()
	p := b.startProc(inst, port)
	defer func() { p.kill(); removeInstance(b.ctx, b.eng, inst, "spawnd-"+inst) }()
	p.waitList(0)
	parallel(50, func(i int) {
		if _, err := p.client.Start(b.ctx, fmt.Sprintf("k%02d", i), "", api.StartRequest{}); err != nil {
			log.Fatal(err)
		}
	})
	var ds []time.Duration
	for range 5 {
		p.kill()
		began := time.Now()
		p = b.startProc(inst, port)
		p.waitList(50)
		ds = append(ds, time.Since(began))
	}
	m, p95 := stats(ds)
	b.add(row{figure: "restart: kill -9 with 50 servers → all adopted (median, max; n=5)", spawnd: ms(m) + ", " + ms(p95), raw: "-", ratio: "-",
		target: "≤ 1 s", pass: p95 <= time.Second})
}

// stop: request to container gone, against the engine's stop+remove.
func (b *bench) stop() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	var sp, raw []time.Duration
	for i := range 20 {
		user := fmt.Sprintf("st%02d", i)
		if _, err := w.client.Start(b.ctx, user, "", api.StartRequest{}); err != nil {
			log.Fatal(err)
		}
		id, _, _ := b.rawStart(b.rawSpec(w, fmt.Sprintf("st%02d", i)))
		time.Sleep(100 * time.Millisecond)
		stopSpawnd := func() {
			began := time.Now()
			if _, err := w.client.Stop(b.ctx, user, ""); err != nil {
				log.Fatal(err)
			}
			sp = append(sp, time.Since(began))
		}
		stopRaw := func() {
			began := time.Now()
			if err := b.rawRemove(id, 3*time.Second); err != nil {
				log.Fatal(err)
			}
			raw = append(raw, time.Since(began))
		}
		if i%2 == 0 { // alternate which side goes first
			stopSpawnd()
			stopRaw()
		} else {
			stopRaw()
			stopSpawnd()
		}
	}
	sm, s95 := stats(sp)
	rm, r95 := stats(raw)
	b.add(row{figure: "stop: request → container gone (median, p95; n=20 each, alternating)", spawnd: ms(sm) + ", " + ms(s95), raw: ms(rm) + ", " + ms(r95) + " (stop+rm)",
		ratio: fmt.Sprintf("%.2f×", ratio(sm, rm)), target: "p95 ≤ 1 s", pass: s95 <= time.Second})
}

// countingEngine counts engine builds.
type countingEngine struct {
	images.Builder
	builds atomic.Int32
}

func (c *countingEngine) Build(ctx context.Context, s backend.BuildSpec, f func(backend.BuildLine)) (string, error) {
	c.builds.Add(1)
	return c.Builder.Build(ctx, s, f)
}

// noopBuild: spawnd build of an unchanged lock whose image exists.
func (b *bench) noopBuild() {
	spec := filepath.Join(b.dir, "team.yaml")
	data, err := os.ReadFile(filepath.Join(b.repo, "envs", "team.yaml"))
	if err != nil {
		log.Fatal(err)
	}
	_ = os.WriteFile(spec, data, 0o644)
	if lock, err := os.ReadFile(envs.LockPath(filepath.Join(b.repo, "envs", "team.yaml"))); err == nil {
		_ = os.WriteFile(envs.LockPath(spec), lock, 0o644) // the quickstart's lock, when there is one
	}
	first := time.Now()
	res, err := images.Build(b.ctx, b.eng, spec, images.Options{CACerts: hostCACerts()})
	firstTook := time.Since(first)
	if err != nil {
		b.add(row{figure: "build: no-op (unchanged lock, image present)", spawnd: "-", raw: "-", ratio: "-", target: "0 builds, ≤ 50 ms", note: "team env did not build: " + err.Error()})
		return
	}
	ce := &countingEngine{Builder: b.eng}
	var ds []time.Duration
	for range 10 {
		began := time.Now()
		if _, err := images.Build(b.ctx, ce, spec, images.Options{}); err != nil {
			log.Fatal(err)
		}
		ds = append(ds, time.Since(began))
	}
	lk, err := envs.ReadLock(envs.LockPath(spec))
	if err != nil {
		log.Fatal(err)
	}
	l := lk.Tag()
	var raw []time.Duration
	for range 10 {
		began := time.Now()
		_, _ = b.eng.ImageInspect(b.ctx, l)
		raw = append(raw, time.Since(began))
	}
	m, _ := stats(ds)
	rm, _ := stats(raw)
	how := "the image was present: nothing built"
	switch {
	case res.Built && res.Locked:
		how = "locked from PyPI and the Debian mirror and built in " + ms(firstTook)
	case res.Built:
		how = "built from its lock in " + ms(firstTook)
	}
	if info, err := b.eng.ImageInspect(b.ctx, l); err == nil {
		b.add(row{figure: "image: envs/team.yaml, the engine's size of the built image", spawnd: fmt.Sprintf("%.0f MB", float64(info.Size)/1e6),
			raw: "-", ratio: "-", target: "report", pass: true, note: how})
	}
	b.add(row{figure: "build: no-op (unchanged lock, image present; median, n=10)", spawnd: fmt.Sprintf("%s, %d engine builds", ms(m), ce.builds.Load()),
		raw: ms(rm) + " (image inspect)", ratio: fmt.Sprintf("%.1f×", ratio(m, rm)), target: "0 builds, ≤ 50 ms", pass: ce.builds.Load() == 0 && m <= 50*time.Millisecond})
}

// pipRebuild: a rebuild after one pip change (relock, apt layer from the
// cache), against a full build of the same spec with no cache.
func (b *bench) pipRebuild() {
	base, err := testenvBase(b)
	if err != nil {
		b.add(row{figure: "build: pip change vs full build", target: "apt layer reused", note: err.Error()})
		return
	}
	ix, stop, err := testenv.StartIndex()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()
	ix.Add("benchpkgb", "1.0")
	ix.Add("benchpkga", "1.0", "benchpkgb")
	env := fmt.Sprintf("benchpip%d", time.Now().UnixNano()%1e6)
	spec := filepath.Join(b.dir, env+".yaml")
	write := func(req string) {
		body := fmt.Sprintf("name: %s\nbase: %s\napt: [python3-pip]\npip:\n  index_url: %s\n  packages: [%q]\n", env, base, ix.URL, req)
		if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	defer testenv.RemoveImages(b.eng, labels.Env, env)
	// Lock, then time the builds alone: the lock step (apt-get update, pip's
	// resolver) is the same work either way.
	lockThenBuild := func(noCache bool) (lockTook, buildTook time.Duration) {
		began := time.Now()
		s, err := envs.Load(spec)
		if err != nil {
			log.Fatal(err)
		}
		l, err := images.Lock(b.ctx, b.eng, s, images.Options{Network: "host"})
		if err != nil {
			log.Fatal(err)
		}
		if err := envs.WriteLock(envs.LockPath(spec), l); err != nil {
			log.Fatal(err)
		}
		lockTook = time.Since(began)
		began = time.Now()
		if _, err := images.Build(b.ctx, b.eng, spec, images.Options{Network: "host", NoCache: noCache}); err != nil {
			log.Fatal(err)
		}
		return lockTook, time.Since(began)
	}
	write("benchpkga==1.0")
	_, full := lockThenBuild(true)
	ix.Add("benchpkga", "1.1", "benchpkgb")
	write("benchpkga==1.1")
	lockTook, change := lockThenBuild(false)
	r := ratio(change, full)
	b.add(row{figure: "build: rebuild after one pip change vs full build (no cache; n=1 each)", spawnd: ms(change), raw: ms(full) + " (full)",
		ratio: fmt.Sprintf("%.2f×", r), target: "apt layer reused", pass: r < 0.5,
		note: fmt.Sprintf("locking, the same either way, took %s more", ms(lockTook))})
}

func testenvBase(b *bench) (string, error) {
	if err := b.eng.CheckImage(b.ctx, testenv.DebianBase); err != nil {
		return "", fmt.Errorf("no %s (scripts/make-base)", testenv.DebianBase)
	}
	return testenv.DebianBase, nil
}

// authTiming: 401 answers for different wrong tokens, interleaved; the
// medians should not tell a near miss from a far one.
func (b *bench) authTiming() {
	w := b.newWorld(nil)
	defer b.closeWorld(w)
	good := w.cfg.Token
	kinds := []struct{ name, token string }{
		{"none", ""},
		{"short", "x"},
		{"same length", strings.Repeat("x", len(good))},
		{"all but the last byte right", good[:len(good)-1] + "x"},
	}
	url := "http://" + w.d.Addr().String() + "/v1/servers"
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	lat := make([][]time.Duration, len(kinds))
	for i := 0; i < 2000; i++ {
		for k, kind := range kinds {
			req, _ := http.NewRequest("GET", url, nil)
			if kind.token != "" {
				req.Header.Set("Authorization", "Bearer "+kind.token)
			}
			began := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				log.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 {
				log.Fatalf("wrong token %q got %d", kind.name, resp.StatusCode)
			}
			lat[k] = append(lat[k], time.Since(began))
		}
	}
	var parts []string
	lo, hi := time.Hour, time.Duration(0)
	for k, kind := range kinds {
		m, _ := stats(lat[k])
		lo, hi = min(lo, m), max(hi, m)
		parts = append(parts, fmt.Sprintf("%s %s", kind.name, ms(m)))
	}
	spread := ratio(hi, lo)
	b.add(row{figure: "auth: 401 medians by wrong token (2,000 each, interleaved)", spawnd: strings.Join(parts, "; "), raw: "-",
		ratio: fmt.Sprintf("%.2f× spread", spread), target: "no difference worth measuring", pass: spread <= 1.10})
}

// fullBuild: a full build of the team env (no build cache, an empty
// package cache: every file fetched) against `docker build --no-cache` of
// the Dockerfile an admin would write by hand for the same env: apt-get
// install of the spec's packages, pip install of the lock's pins with
// hashes from PyPI, the kernel, the user. Interleaved, alternating which
// side goes first; n rounds each.
func (b *bench) fullBuild() {
	teamSpec := filepath.Join(b.repo, "envs", "team.yaml")
	l, err := envs.ReadLock(envs.LockPath(teamSpec))
	if err != nil {
		b.add(row{figure: "build: full team build vs docker build", target: "≤ 1.10×", note: "no team lock: " + err.Error()})
		return
	}
	s, err := envs.Load(teamSpec)
	if err != nil {
		log.Fatal(err)
	}
	spec := filepath.Join(b.dir, "team.yaml")
	data, _ := os.ReadFile(teamSpec)
	_ = os.WriteFile(spec, data, 0o644)
	_ = os.WriteFile(envs.LockPath(spec), l.Marshal(), 0o644)
	ca := hostCACerts()

	var req strings.Builder
	for _, p := range l.Pip.Packages {
		fmt.Fprintf(&req, "%s==%s --hash=sha256:%s\n", p.Name, p.Version, p.SHA256)
	}
	kernel := fmt.Sprintf(`{"argv": ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": %q, "language": "python"}`, "Team (Python 3)")
	cmd, _ := json.Marshal(l.Cmd)
	dockerfile := fmt.Sprintf(`FROM %s
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends %s && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
ARG PIP_CA
RUN if [ -n "$PIP_CA" ]; then cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.pem; printf '%%s\n' "$PIP_CA" >> /tmp/ca.pem; export PIP_CERT=/tmp/ca.pem; fi; \
    python3 -m pip install --no-cache-dir --no-deps --require-hashes --break-system-packages -r /tmp/requirements.txt && rm -f /tmp/requirements.txt /tmp/ca.pem
COPY kernel.json /usr/local/share/jupyter/kernels/team/kernel.json
RUN groupadd -g %d %s 2>/dev/null || true; useradd -m -u %d -g %d -s /bin/sh %s
USER %d:%d
WORKDIR /home/%s
EXPOSE 8888
CMD %s
`, l.Base.Ref, strings.Join(s.Apt, " "), l.User.GID, l.User.Name, l.User.UID, l.User.GID, l.User.Name, l.User.UID, l.User.GID, l.User.Name, cmd)
	rawTag := "spawnd-bench/handwritten:" + l.ShortDigest()
	defer func() {
		_, _ = testenv.Client(b.eng).ImageRemove(context.Background(), rawTag, client.ImageRemoveOptions{Force: true})
	}()
	raw := func() (time.Duration, error) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, f := range []struct{ name, body string }{{"Dockerfile", dockerfile}, {"requirements.txt", req.String()}, {"kernel.json", kernel}} {
			_ = tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body))})
			_, _ = tw.Write([]byte(f.body))
		}
		_ = tw.Close()
		began := time.Now()
		caArg := string(ca)
		resp, err := testenv.Client(b.eng).ImageBuild(b.ctx, &buf, client.ImageBuildOptions{Tags: []string{rawTag}, NoCache: true, Remove: true, ForceRemove: true,
			Labels: map[string]string{labels.Test: "bench"}, BuildArgs: map[string]*string{"PIP_CA": &caArg}})
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		if bytes.Contains(out, []byte(`"errorDetail"`)) {
			return 0, fmt.Errorf("hand-written build failed: %s", out[max(0, len(out)-600):])
		}
		return time.Since(began), nil
	}
	ours := func() (time.Duration, error) {
		cache, err := os.MkdirTemp(b.dir, "pkgcache-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(cache)
		_ = b.eng.RemoveImage(b.ctx, l.Tag())
		began := time.Now()
		if _, err := images.Build(b.ctx, b.eng, spec, images.Options{CACerts: ca, NoCache: true, CacheDir: cache}); err != nil {
			return 0, err
		}
		return time.Since(began), nil
	}
	n := 2
	var sp, rw []time.Duration
	for i := 0; i < n; i++ {
		sides := []func() (time.Duration, error){ours, raw}
		if i%2 == 1 {
			sides = []func() (time.Duration, error){raw, ours}
		}
		for j, side := range sides {
			d, err := side()
			if err != nil {
				b.add(row{figure: "build: full team build vs docker build", target: "≤ 1.10×", note: err.Error()})
				return
			}
			if (j == 0) == (i%2 == 0) {
				sp = append(sp, d)
			} else {
				rw = append(rw, d)
			}
		}
	}
	m, _ := stats(sp)
	rm, _ := stats(rw)
	r := ratio(m, rm)
	b.add(row{figure: fmt.Sprintf("build: full team build (no build cache, empty package cache) vs docker build of a hand-written Dockerfile (median, n=%d each, interleaved)", n),
		spawnd: ms(m), raw: ms(rm), ratio: fmt.Sprintf("%.2f×", r), target: "≤ 1.10×", pass: r <= 1.10,
		note: "spawnd's side downloads every file (6 at a time), builds offline and normalizes (reads the image out of the engine, rewrites its layers, loads it back); samples " + fmt.Sprint(sp) + " vs " + fmt.Sprint(rw)})
}
