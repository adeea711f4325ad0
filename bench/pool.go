package main

import (
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// poolFigures: starts through the hub and its proxy on warm servers
// (pools, issue #28), the team image, the default profile's limits: one
// user at a time (POST → /user/NAME/api, and the CPU the server spends
// after the request), a class of 100 on a pool of 100, a class of 50 on
// a pool of 20, and what keeping a pool costs in memory. The cold path is
// the hub group's figures of the same sitting.
func (b *bench) poolFigures() {
	b.warmOneAndClass(100, 100)
	b.warmOneAndClass(20, 50)
}

func (b *bench) warmOneAndClass(size, class int) {
	w := b.newHubWorld(func(c *daemon.Config) {
		// The cold figures' profile (2g, 1 CPU, 1024 pids), with a
		// reservation so that a pool of 100 fits this host's memory.
		c.Profiles = map[string]spawnd.ProfileConfig{"default": {Memory: "2g", CPUs: 1, MemoryReservation: "150m"}}
		c.Pools = []spawnd.PoolConfig{{Env: "team", Size: size}}
	})
	defer w.close()
	t0 := time.Now()
	if !w.waitPoolReady(size, 20*time.Minute) {
		log.Fatalf("pool: %d warm servers not ready within 20 minutes; see %s", size, w.hubLog.Name())
	}
	fill := time.Since(t0)
	if size == 100 {
		mem := w.poolMemory()
		if len(mem) > 0 {
			var sum int64
			for _, m := range mem {
				sum += m
			}
			b.add(row{figure: fmt.Sprintf("pool: memory per warm server, cgroup memory.current (mean of %d); the pool of %d together", len(mem), size),
				spawnd: fmt.Sprintf("%.0f MiB; %.2f GiB", float64(sum)/float64(len(mem))/(1<<20), float64(sum)/float64(len(mem))*float64(size)/(1<<30)),
				raw:    "-", ratio: "-", target: "report", pass: true,
				note: fmt.Sprintf("filling the pool of %d took %s (refills run at the admission limit, below any start)", size, ms(fill))})
		}
		b.warmOne(w, 20)
		if !w.waitPoolReady(size, 20*time.Minute) {
			log.Fatalf("pool: not refilled to %d", size)
		}
	}
	var users []string
	for i := range class {
		users = append(users, fmt.Sprintf("p%d-%03d", size, i))
	}
	w.createUsers(users)
	takenBefore := 0
	if ps, err := w.d.client.Pools(b.ctx); err == nil && len(ps) == 1 {
		takenBefore = ps[0].Taken
	}
	var mu sync.Mutex
	var each []time.Duration
	var errs []string
	t1 := time.Now()
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := w.spawnViaHub(u, 10*time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			each = append(each, d)
		}()
	}
	wg.Wait()
	wall := time.Since(t1)
	for _, e := range errs[:min(3, len(errs))] {
		log.Printf("  pool: %s", e)
	}
	pools, _ := w.d.client.Pools(b.ctx)
	taken := 0
	if len(pools) == 1 {
		taken = pools[0].Taken - takenBefore
	}
	p50, p95 := stats(each)
	// The daemon's part: when its start of each user answered (listening),
	// from the class's first request.
	var answered []time.Duration
	for _, u := range users {
		if at, ok := w.d.answers.get(u); ok {
			answered = append(answered, at.Sub(t1))
		}
	}
	a50, a95 := stats(answered)
	log.Printf("  pool: class of %d on %d warm: the daemon's starts answered p50 %s, p95 %s (n=%d); ready through the hub p50 %s, p95 %s",
		class, size, ms(a50), ms(a95), len(answered), ms(p50), ms(p95))
	daemonPart := fmt.Sprintf("; the daemon's starts answered p50 %s, p95 %s from the first request", ms(a50), ms(a95))
	if size >= class {
		b.add(row{figure: fmt.Sprintf("pool: class of %d at once through the hub on a pool of %d warm (ready; p50, p95 per user; wall)", class, size),
			spawnd: fmt.Sprintf("%d/%d; %s, %s; %s", len(each), class, ms(p50), ms(p95), ms(wall)), raw: "- (cold: the hub rows of this sitting)", ratio: "-",
			target: "all ready, 0 errors; wall ≤ 30 s; p50 ≤ 10 s", pass: len(each) == class && wall <= 30*time.Second && p50 <= 10*time.Second,
			note: fmt.Sprintf("%d hub errors; %d of %d took a warm server", len(errs), taken, class) + daemonPart})
	} else {
		b.add(row{figure: fmt.Sprintf("pool: class of %d at once through the hub on a pool of %d warm (ready; p50, p95 per user; wall)", class, size),
			spawnd: fmt.Sprintf("%d/%d; %s, %s; %s", len(each), class, ms(p50), ms(p95), ms(wall)), raw: "- (cold: the hub rows of this sitting)", ratio: "-",
			target: "all ready, 0 errors; no worse than cold (compare the hub class of 50)", pass: len(each) == class,
			note: fmt.Sprintf("%d hub errors; %d of %d took a warm server, the rest booted cold", len(errs), taken, class) + daemonPart})
	}
}

// warmOne: n users one after another, each on a warm server.
func (b *bench) warmOne(w *hubWorld, n int) {
	var users []string
	for i := range n {
		users = append(users, fmt.Sprintf("pw%03d", i))
	}
	w.createUsers(users)
	var took, cpu []time.Duration
	errs := 0
	for _, u := range users {
		before := w.poolCPU()
		d, err := w.spawnViaHub(u, 5*time.Minute)
		if err != nil {
			log.Printf("  pool: %v", err)
			errs++
			continue
		}
		took = append(took, d)
		if s, err := w.d.client.Status(b.ctx, u, ""); err == nil {
			if c0, ok := before[s.ContainerID]; ok && s.Warm {
				cpu = append(cpu, w.cgroupCPU(s.ContainerID)-c0)
			}
		}
	}
	for _, u := range users {
		_ = w.stopViaHub(u)
	}
	m, p95 := stats(took)
	b.add(row{figure: fmt.Sprintf("pool: one user on a warm server, POST → /user/NAME/api through the proxy (p50, p95; n=%d, one at a time)", len(took)),
		spawnd: ms(m) + ", " + ms(p95), raw: "- (cold: the hub sequential spawn of this sitting)", ratio: "-",
		target: "p50 ≤ 0.8 s, 0 errors", pass: errs == 0 && len(took) > 0 && m <= 800*time.Millisecond, note: fmt.Sprintf("%d errors", errs)})
	if len(cpu) > 0 {
		cm, c95 := stats(cpu)
		b.add(row{figure: fmt.Sprintf("pool: CPU a warm server spends after the start request, until /api answers (p50, p95; n=%d)", len(cpu)),
			spawnd: fmt.Sprintf("%.2f s, %.2f s", cm.Seconds(), c95.Seconds()), raw: "- (a cold boot: the hub boot CPU row)", ratio: "-",
			target: "≤ 0.4 s", pass: cm <= 400*time.Millisecond})
	}
}

// waitPoolReady waits until the world's one pool has n ready.
func (w *hubWorld) waitPoolReady(n int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if ps, err := w.d.client.Pools(w.b.ctx); err == nil && len(ps) == 1 {
			if ps[0].Cold != "" {
				log.Fatalf("pool: the team env cannot be pre-warmed: %s", ps[0].Cold)
			}
			if ps[0].Ready >= n {
				return true
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return false
}

// poolContainers are the world's running pool containers.
func (w *hubWorld) poolContainers() []string {
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+w.d.cfg.Instance)
	f.Add("label", labels.Pool)
	res, err := testenv.Client(w.b.eng).ContainerList(w.b.ctx, client.ContainerListOptions{Filters: f})
	if err != nil {
		return nil
	}
	var ids []string
	for _, c := range res.Items {
		ids = append(ids, c.ID)
	}
	return ids
}

// poolCPU is each pool container's CPU time so far.
func (w *hubWorld) poolCPU() map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, id := range w.poolContainers() {
		out[id] = w.cgroupCPU(id)
	}
	return out
}

// poolMemory is each pool container's memory in use.
func (w *hubWorld) poolMemory() []int64 {
	var out []int64
	for _, id := range w.poolContainers() {
		if m := w.memUsage(id); m > 0 {
			out = append(out, m)
		}
	}
	return out
}

// memUsage is a container's memory in use, as `docker stats` shows it
// (usage less the page cache).
func (w *hubWorld) memUsage(id string) int64 {
	res, err := testenv.Client(w.b.eng).ContainerStats(w.b.ctx, id, client.ContainerStatsOptions{Stream: false})
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if json.NewDecoder(res.Body).Decode(&st) != nil {
		return 0
	}
	use := int64(st.MemoryStats.Usage)
	if c, ok := st.MemoryStats.Stats["total_inactive_file"]; ok && int64(c) < use {
		use -= int64(c)
	} else if c, ok := st.MemoryStats.Stats["inactive_file"]; ok && int64(c) < use {
		use -= int64(c)
	}
	return use
}

// cgroupCPU is a container's CPU time read from its cgroup (v1 cpuacct or
// v2 cpu.stat under the cgroupfs driver's docker/ parent), else through
// the engine's stats.
func (w *hubWorld) cgroupCPU(id string) time.Duration {
	if b, err := os.ReadFile("/sys/fs/cgroup/cpuacct/docker/" + id + "/cpuacct.usage"); err == nil {
		ns, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return time.Duration(ns)
	}
	for _, p := range []string{"/sys/fs/cgroup/docker/" + id + "/cpu.stat", "/sys/fs/cgroup/system.slice/docker-" + id + ".scope/cpu.stat"} {
		if b, err := os.ReadFile(p); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					us, _ := strconv.ParseInt(v, 10, 64)
					return time.Duration(us) * time.Microsecond
				}
			}
		}
	}
	return w.bootCPU(id)
}
