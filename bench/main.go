// Command bench measures spawnd against the raw Docker engine on this
// machine, in the same run, interleaved, and prints a table (figure, spawnd,
// raw engine, ratio, target, pass/fail); with -md it also writes the table
// and the machine's description as Markdown (docs/PERFORMANCE.md).
//
//	go run ./bench                    # every figure (a few minutes)
//	go run ./bench -md docs/PERFORMANCE.md
//	go run ./bench -only spawn,status # some figures
//
// Figures are medians and p95 over interleaved rounds; targets are ratios
// against the engine where the engine does the same work, absolute where it
// has no counterpart. Nothing here is a test: the machines are shared and
// noisy, so a figure is information, not a verdict on a commit.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// row is one line of the results table.
type row struct {
	group   string // the figure's identity: its -only name (spawn, hub, …)
	figure  string
	spawnd  string
	raw     string
	ratio   string
	target  string
	pass    bool
	note    string
	skipped bool
}

type bench struct {
	ctx     context.Context
	eng     *docker.Engine
	image   string
	dir     string
	rows    []row
	group   string   // the figure group running now
	groups  []string // every group, in order, run or not
	rounds  int
	repo    string
	binPath string
	classes []int // class sizes for the hub figures
}

func main() {
	md := flag.String("md", "", "also write the results as Markdown to this file")
	only := flag.String("only", "", "comma-separated figures: spawn,http,class,burst,status,reconcile,memory,restart,stop,build,pip,fullbuild,auth,hub,swarm")
	rounds := flag.Int("rounds", 20, "rounds for the per-spawn figures (a p95 needs at least 20; fewer report the max)")
	classes := flag.String("class", "20,50,100", "class sizes for the hub figures")
	flag.Parse()
	log.SetFlags(0)
	ctx := context.Background()

	eng, err := docker.New("")
	if err != nil {
		log.Fatal(err)
	}
	if err := eng.Ping(ctx); err != nil {
		log.Fatalf("no Docker engine: %v (run scripts/engine-up)", err)
	}
	repo, _ := os.Getwd()
	dir, err := os.MkdirTemp("", "spawnd-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	b := &bench{ctx: ctx, eng: eng, dir: dir, rounds: *rounds, repo: repo}
	for _, c := range strings.Split(*classes, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(c)); err == nil && n > 0 {
			b.classes = append(b.classes, n)
		}
	}
	b.image = ensureBusybox(ctx, eng)

	want := map[string]bool{}
	for _, f := range strings.Split(*only, ",") {
		if f != "" {
			want[f] = true
		}
	}
	figures := []struct {
		name string
		fn   func()
	}{
		{"spawn", b.spawnOverhead},
		{"http", b.spawnToHTTP},
		{"class", b.classStart},
		{"burst", b.sameServerBurst},
		{"status", b.statusLatency},
		{"reconcile", b.reconcile},
		{"memory", b.memory},
		{"restart", b.restart},
		{"stop", b.stop},
		{"build", b.noopBuild},
		{"pip", b.pipRebuild},
		{"fullbuild", b.fullBuild},
		{"auth", b.authTiming},
		{"hub", b.hubFigures},
		{"pool", b.poolFigures},
		{"swarm", b.swarmFigures},
	}
	for _, f := range figures {
		b.groups = append(b.groups, f.name)
		if len(want) > 0 && !want[f.name] {
			continue
		}
		log.Printf("bench: %s…", f.name)
		b.group = f.name
		f.fn()
	}
	table := b.table()
	fmt.Print(table)
	if *md != "" {
		if err := writeMarkdown(*md, table, eng); err != nil {
			log.Fatal(err)
		}
		log.Printf("bench: wrote %s", *md)
	}
}

// world is an in-process daemon with its own instance, homes and network.
type world struct {
	d       *daemon.Daemon
	client  *api.Client
	cfg     daemon.Config
	cancel  context.CancelFunc
	done    chan error
	answers *startTimes // when the daemon's starts answered, per user
}

func (b *bench) newWorld(mod func(*daemon.Config)) *world {
	inst := fmt.Sprintf("bench%d", time.Now().UnixNano()%1e9)
	homes := filepath.Join(b.dir, inst)
	if err := os.MkdirAll(homes, 0o755); err != nil {
		log.Fatal(err)
	}
	cfg := daemon.Config{
		Listen: "127.0.0.1:0",
		Token:  "bench-token-0123456789abcdef",
		Config: spawnd.Config{
			Instance:  inst,
			HomesRoot: homes,
			Network:   spawnd.NetworkConfig{Name: "spawnd-" + inst},
			Envs: map[string]spawnd.EnvConfig{
				"team": {Image: b.image, User: spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}},
			},
			Profiles: map[string]spawnd.ProfileConfig{"default": {Memory: "256m", CPUs: 1, Pids: 128}},
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	answers := &startTimes{at: map[string]time.Time{}}
	d, err := daemon.New(cfg, slog.New(startLog{times: answers}))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	w := &world{d: d, cfg: cfg, cancel: cancel, done: make(chan error, 1), answers: answers}
	go func() { w.done <- d.Run(ctx); d.Close() }()
	w.client, _ = api.NewClient(d.Addr().String(), cfg.Token)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if h, err := w.client.Health(b.ctx); err == nil && h.Engine == "up" {
			break
		}
		if time.Now().After(deadline) {
			log.Fatal("daemon did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return w
}

func (b *bench) closeWorld(w *world) {
	w.cancel()
	<-w.done
	removeInstance(b.ctx, b.eng, w.cfg.Instance, w.cfg.Network.Name)
}

// rawSpec is the container spawnd would create, for the raw engine baseline:
// same image, hardening, limits, bind-mounted home and published port.
func (b *bench) rawSpec(w *world, name string) backend.ContainerSpec {
	home := filepath.Join(w.cfg.HomesRoot, "raw-"+name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		log.Fatal(err)
	}
	_ = os.Chown(home, 1000, 100)
	return backend.ContainerSpec{
		Name:   "spawnd-raw-" + w.cfg.Instance + "-" + name,
		Image:  b.image,
		Labels: map[string]string{labels.Instance: w.cfg.Instance + "raw", labels.Port: "8888", labels.Test: "1"},
		Env:    []string{"HOME=/home/jovyan", "USER=jovyan"},
		User:   "1000:100", WorkingDir: "/home/jovyan",
		Mounts:    []backend.Mount{{Source: home, Target: "/home/jovyan"}},
		Port:      8888,
		PublishIP: "127.0.0.1",
		Network:   w.cfg.Network.Name,
		Memory:    256 << 20, NanoCPUs: 1e9, PidsLimit: 128,
	}
}

// stats returns the median and the tail of a sample, both nearest-rank
// (the smallest value with at least p% of the sample at or below it): the
// p50, and the p95 with 20 or more samples, else the maximum (tailName says
// which). With n = 2 the median is the smaller sample, never the maximum.
func stats(ds []time.Duration) (median, tail time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	if len(ds) < 20 {
		return nearestRank(ds, 50), nearestRank(ds, 100)
	}
	return nearestRank(ds, 50), nearestRank(ds, 95)
}

// tailName is what stats' second value is for n samples.
func tailName(n int) string {
	if n < 20 {
		return "max"
	}
	return "p95"
}

// nearestRank is the nearest-rank p-th percentile (0 < p ≤ 100): the
// value at rank ⌈p·n/100⌉ of the sorted sample.
func nearestRank(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := (p*len(s) + 99) / 100
	return s[max(0, min(len(s)-1, rank-1))]
}

func pct(ds []time.Duration, p float64) time.Duration { return nearestRank(ds, int(p*100+0.5)) }

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}

func (b *bench) add(r row) {
	r.group = b.group
	b.rows = append(b.rows, r)
	mark := "PASS"
	if !r.pass {
		mark = "MISS"
	}
	log.Printf("  %-44s spawnd %-18s raw %-18s %-8s target %-12s %s %s", r.figure, r.spawnd, r.raw, r.ratio, r.target, mark, r.note)
}

// table is the whole results table of this run, in the figures' order:
// every figure group this run measured with its rows, and every other one
// as "not run in this sitting", never with an older number. One run, one
// page.
func (b *bench) table() string {
	var sb strings.Builder
	sb.WriteString("| figure | spawnd | raw engine | ratio | target | result |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, g := range b.groups {
		n := 0
		for _, r := range b.rows {
			if r.group != g {
				continue
			}
			n++
			res := "pass"
			if !r.pass {
				res = "**miss**"
			}
			if r.note != "" {
				res += " (" + r.note + ")"
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s |\n", r.figure, r.spawnd, r.raw, r.ratio, r.target, res)
		}
		if n == 0 {
			fmt.Fprintf(&sb, "| %s: not run in this sitting (go run ./bench -only %s) | - | - | - | - | - |\n", g, g)
		}
	}
	return sb.String()
}

func writeMarkdown(path, table string, eng *docker.Engine) error {
	ctx := context.Background()
	info, err := eng.Info(ctx)
	if err != nil {
		return err
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	head, tailPart := "", ""
	if old, err := os.ReadFile(path); err == nil {
		s := string(old)
		if i := strings.Index(s, "<!-- bench:begin -->"); i >= 0 {
			head = s[:i]
			if j := strings.Index(s, "<!-- bench:end -->"); j >= 0 {
				tailPart = s[j+len("<!-- bench:end -->"):]
			}
		}
	}
	if head == "" {
		head = "# Performance\n\n"
	}
	body := fmt.Sprintf("<!-- bench:begin -->\nMeasured %s with `go run ./bench` on %d cores (%s), Linux %s, Docker %s (API %s), runc %s.\n\n%s<!-- bench:end -->",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), cpu, strings.TrimSpace(string(kernel)), info.Version, info.APIVersion, info.RuncVersion, table)
	return os.WriteFile(path, []byte(head+body+tailPart), 0o644)
}
