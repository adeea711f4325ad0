package spawnd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
	"github.com/spawnd/spawnd/spawnd/idmap"
)

// TestTakeWarmMatchesAndRaces: a start takes a warm server only of its
// env, profile, lock and command, with no team folder to mount; two starts
// racing for the last one: one gets it, the other boots cold.
func TestTakeWarmMatchesAndRaces(t *testing.T) {
	cfg := testConfig(t)
	m := newTestManager(t, cfg, fakebackend.New())
	// The fake backend has no late mounts (NewManager refuses pools on
	// it); the pool's bookkeeping is what this test is about.
	withPools := cfg
	withPools.Pools = []PoolConfig{{Env: "team", Size: 1}}
	if err := withPools.Validate(); err != nil {
		t.Fatal(err)
	}
	m.cfg.Pools = withPools.Pools
	m.pool = newPool()
	put := func() {
		m.pool.mu.Lock()
		m.pool.warm["c1"] = &warmServer{id: "c1", slot: "warm.1", pool: "team/default", lock: "sha256:lock1", cmd0: "jupyterhub-singleuser", ready: true, created: time.Now()}
		m.pool.mu.Unlock()
	}
	plan := func(mut func(*startPlan)) startPlan {
		p, err := resolveStart(m.config(), m.envs.current(), "ada", "", StartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		p.cmd = []string{"/usr/local/bin/jupyterhub-singleuser", "--debug"}
		if mut != nil {
			mut(&p)
		}
		return p
	}
	tests := []struct {
		name string
		mut  func(*startPlan)
		take bool
	}{
		{"its env, profile, lock and command", nil, true},
		{"another lock", func(p *startPlan) { p.env.LockDigest = "sha256:lock2" }, false},
		{"another command", func(p *startPlan) { p.cmd = []string{"jupyter-lab"} }, false},
		{"another profile", func(p *startPlan) { p.profileName = "big" }, false},
		{"a team folder", func(p *startPlan) { p.shared = []SharedFolder{{Source: "/srv/x", Target: "/home/jovyan/x"}} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put()
			w := m.takeWarm(plan(tt.mut))
			if (w != nil) != tt.take {
				t.Fatalf("takeWarm = %v; want taken %v", w, tt.take)
			}
			m.pool.mu.Lock()
			_, left := m.pool.warm["c1"]
			m.pool.mu.Unlock()
			if left == tt.take {
				t.Fatalf("after the take, still in the pool: %v", left)
			}
		})
	}

	// Taken, before its claim is written: the engine's view of it (a
	// running pool container with no claim) must not put it back in the
	// pool for another start (seen once in CI: a class of 30 on 30 warm
	// servers had one start find none).
	slotsDir := t.TempDir()
	var err error
	if m.slots, err = newSlots(slotsDir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(slotsDir, "warm.1"), 0o700); err != nil { // its slot, no home on it yet
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(slotsDir, "warm.1"+handoffSuffix), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(slotsDir, "warm.1"+handoffSuffix, readyFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	put()
	taken := m.takeWarm(plan(nil))
	if taken == nil {
		t.Fatal("not taken")
	}
	m.observeWarm(backend.Container{ID: "c1", State: backend.Running, Created: time.Now(),
		Labels: map[string]string{labels.Pool: "team/default", labels.HomeSlot: "warm.1", labels.LockDigest: "sha256:lock1", labels.PoolCmd: "jupyterhub-singleuser"}})
	if again := m.takeWarm(plan(nil)); again != nil {
		t.Fatal("a warm server a start had taken, seen by the engine before its claim was written, was taken again")
	}
	m.pool.forget("c1")

	put()
	m.pool.mu.Lock()
	m.pool.warm["c1"].ready = false
	m.pool.mu.Unlock()
	if w := m.takeWarm(plan(nil)); w != nil {
		t.Fatal("a warm server still importing was taken")
	}

	put()
	var wg sync.WaitGroup
	got := make(chan *warmServer, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w := m.takeWarm(plan(nil)); w != nil {
				got <- w
			}
		}()
	}
	wg.Wait()
	close(got)
	if n := len(got); n != 1 {
		t.Fatalf("%d of 8 racing starts took the one warm server; want 1", n)
	}
	st := m.Pools()
	if len(st) != 1 || st[0].Taken < 2 || st[0].Missed < 7 {
		t.Fatalf("pool status after the race: %+v", st)
	}
}

func TestSlotFilesBelongToTheirSlot(t *testing.T) {
	for name, want := range map[string]string{"warm.ab12.claim": "warm.ab12", "warm.ab12.handoff": "warm.ab12", "warm.ab12.claim.tmp": "warm.ab12", "warm.ab12": "", "spawnd-x-ada-0011": ""} {
		got, ok := slotOf(name)
		if got != want || ok != (want != "") {
			t.Errorf("slotOf(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// TestPoolsNeedLateMounts: a backend whose containers cannot take a home
// after they start (Swarm, the fake) refuses pools with what to do.
func TestPoolsNeedLateMounts(t *testing.T) {
	cfg := testConfig(t)
	cfg.Pools = []PoolConfig{{Env: "team", Size: 1}}
	_, err := NewManager(cfg, backend.Set{Name: "swarm", Runtime: fakebackend.New()}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "pools: the swarm backend cannot hand a running server its home") {
		t.Fatalf("NewManager = %v; want pools refused on a backend without late mounts", err)
	}
}

// TestSweepKeepsOnlyLiveSlots: a slot stays while a created or running
// container names it (or a start holds it); an ended server's slot goes
// with its claim and hand-off; the launcher's files stay.
func TestSweepKeepsOnlyLiveSlots(t *testing.T) {
	dir := t.TempDir()
	s, err := newSlots(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"warm.run", "warm.ended", "warm.orphan", "warm.held", "warm.orphan.handoff", launcherDir} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"warm.ended.claim", "warm.gone.claim", launcherDir + "/launch.sh"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.hold("warm.held")
	list := func(context.Context) ([]backend.Container, error) {
		return []backend.Container{
			{ID: "1", State: backend.Running, Labels: map[string]string{labels.HomeSlot: "warm.run"}},
			{ID: "2", State: backend.Exited, Labels: map[string]string{labels.HomeSlot: "warm.ended"}},
		}, nil
	}
	s.sweep(context.Background(), list)
	for name, want := range map[string]bool{
		"warm.run": true, "warm.held": true, launcherDir + "/launch.sh": true,
		"warm.ended": false, "warm.ended.claim": false, "warm.orphan": false, "warm.orphan.handoff": false, "warm.gone.claim": false,
	} {
		if got := fileExists(filepath.Join(dir, name)); got != want {
			t.Errorf("after the sweep %s exists: %v; want %v", name, got, want)
		}
	}
}

// TestHandOffFailureStartsCold: a warm server that dies after a start took
// it (after its home was mounted, its claim written and its hand-off
// given) is discarded, and the start goes on cold in the same progress
// stream: the person gets a server, nothing of the warm one is left.
func TestHandOffFailureStartsCold(t *testing.T) {
	mustRoot(t) // the home is really mounted on the slot
	cfg := testConfig(t)
	team := cfg.Envs["team"]
	team.Cmd = []string{"jupyterhub-singleuser"}
	cfg.Envs["team"] = team
	rt := fakebackend.New()
	var mu sync.Mutex
	warmID, warmAddr := "", ""
	dial := func(_ context.Context, addr string) error {
		mu.Lock()
		defer mu.Unlock()
		if addr == warmAddr {
			rt.Exit(warmID, 1, false) // the warm server dies as it is handed its start
			return errors.New("connection refused")
		}
		return nil
	}
	m := newTestManagerWith(t, cfg, rt, nil, dial)
	withPools := cfg
	withPools.Pools = []PoolConfig{{Env: "team", Size: 1}}
	if err := withPools.Validate(); err != nil {
		t.Fatal(err)
	}
	m.cfg.Pools = withPools.Pools
	slots, err := newSlots(t.TempDir(), m.log)
	if err != nil {
		t.Fatal(err)
	}
	m.slots, m.pool = slots, newPool()
	// A warm server as makeWarm leaves one: its slot, its hand-off with the
	// launcher's ready, its container.
	env := m.envs.current()["team"]
	slot := "warm.test"
	if err := os.Mkdir(slots.path(slot), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(slots.path(slot), unix.MNT_DETACH) })
	if err := os.MkdirAll(slots.path(slot)+handoffSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(slots.path(slot)+handoffSuffix, readyFile), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := rt.Run(context.Background(), m.warmSpec(m.cfg.Pools[0], env, slot))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	warmID, warmAddr = c.ID, c.IP+":8888"
	mu.Unlock()
	m.view.mu.Lock()
	m.adoptLocked(c) // the engine's start event: after the sync, not a pool member by itself
	m.view.mu.Unlock()
	if st := m.Pools(); len(st) != 1 || st[0].Ready != 0 || st[0].Warming != 0 {
		t.Fatalf("the engine's start event counted a server makeWarm registers: %+v", st)
	}
	m.pool.mu.Lock() // as makeWarm registers it once ready
	m.pool.warm[c.ID] = &warmServer{id: c.ID, slot: slot, pool: m.cfg.Pools[0].Name(), lock: env.LockDigest,
		cmd0: c.Labels[labels.PoolCmd], ready: true, created: time.Now()}
	m.pool.mu.Unlock()
	if st := m.Pools(); len(st) != 1 || st[0].Ready != 1 {
		t.Fatalf("the warm server is not ready in the pool: %+v", st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := m.Start(ctx, "ada", "", StartRequest{})
	if err != nil {
		t.Fatalf("the start after a failed hand-off: %v; want it to go on cold", err)
	}
	if srv.ContainerID == warmID || srv.Warm || !srv.Ready {
		t.Fatalf("the start's server: %+v; want a new, cold, ready container (the warm one was %s)", srv, short(warmID))
	}
	var msgs []string
	_ = m.Progress(ctx, "ada", "", func(ev ProgressEvent) error { msgs = append(msgs, ev.Message); return nil })
	all := strings.Join(msgs, "\n")
	if !strings.Contains(all, "A warm server was ready") || !strings.Contains(all, "could not take over; starting a fresh server") {
		t.Fatalf("the spawn page said:\n%s\nwant the warm server, then the fresh start, in one stream", all)
	}
	if _, err := rt.Inspect(ctx, warmID); err == nil {
		t.Fatal("the failed warm server was not removed")
	}
	m.pool.mu.Lock()
	claims := len(m.pool.claims)
	m.pool.mu.Unlock()
	if claims != 0 {
		t.Fatalf("%d claims left in memory", claims)
	}
	m.slots.sweep(ctx, func(ctx context.Context) ([]backend.Container, error) { return rt.List(ctx, nil) })
	if mounted, _ := idmap.Mounted(slots.path(slot)); mounted || fileExists(slots.path(slot)) || fileExists(slots.path(slot)+claimSuffix) {
		t.Fatalf("after the sweep the warm server's slot is still there (mounted %v) or its claim", mounted)
	}
}

// TestWarmServersFinishInTurn: at most max_concurrent_starts warm servers
// finish their boot at once, the rest in the order they asked, each told
// it waits; a start whose deadline passes in line gets a clear error.
func TestWarmServersFinishInTurn(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxConcurrentStarts = 2
	m := newTestManager(t, cfg, fakebackend.New())
	if m.finish.free != 2 {
		t.Fatalf("%d turns; want max_concurrent_starts = 2", m.finish.free)
	}
	ctx := context.Background()
	var holding []func()
	for range 2 {
		rel, err := m.finishTurn(ctx, &record{progress: newProgressLog()})
		if err != nil {
			t.Fatal(err)
		}
		holding = append(holding, rel)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	recs := make([]*record, 3)
	for i := range recs {
		recs[i] = &record{progress: newProgressLog()}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := m.finishTurn(ctx, recs[i])
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			rel()
		}()
		// Each asks after the one before is in line.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(fmtEvents(recs[i].progress), "next in line") {
			if time.Now().After(deadline) {
				t.Fatalf("start %d was not told it waits: %s", i, fmtEvents(recs[i].progress))
			}
			time.Sleep(time.Millisecond)
		}
	}
	mu.Lock()
	if len(order) != 0 {
		t.Fatalf("%v finished while 2 held their turn", order)
	}
	mu.Unlock()
	holding[0]()
	wg.Wait()
	holding[1]()
	if len(order) != 3 || order[0] != 0 || order[1] != 1 || order[2] != 2 {
		t.Fatalf("turns came in the order %v; want [0 1 2]", order)
	}

	m.cfg.StartTimeout = 50 * time.Millisecond
	var all []func()
	for range 2 {
		rel, _ := m.finishTurn(ctx, &record{progress: newProgressLog()})
		all = append(all, rel)
	}
	_, err := m.finishTurn(ctx, &record{progress: newProgressLog()})
	var e *Error
	if !errors.As(err, &e) || e.Kind != ErrUnavailable || !strings.Contains(e.Msg, "max_concurrent_starts") {
		t.Fatalf("a start past its deadline in line: %v", err)
	}
	for _, rel := range all {
		rel()
	}
}

func fmtEvents(p *progressLog) string {
	var b strings.Builder
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.events {
		b.WriteString(e.Message + "\n")
	}
	return b.String()
}
