package spawnd

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/idmap"
	"github.com/spawnd/spawnd/spawnd/launcher"
)

// The pool (issue #28) keeps warm servers: containers of an env and
// profile, started before anyone asks, with every hardening of a server,
// that have imported the single-user server and wait (launcher/). Each
// has a slot of its own (slots.go), bind-mounted at the home with rslave
// propagation and empty until a start takes the server: then the person's
// home is mounted on the slot on the host (idmapped for home_owner system
// and range), the assignment is written to the slot's claim file, and the
// server's environment is handed in through the slot's hand-off
// directory, which only that container mounts and only the image's uid
// may read. A warm server serves one start once; it never goes back.
//
// Labels cannot change, so the claim file is the truth of whose a warm
// server became: written (temp + rename) before the hand-off, read back
// when the daemon starts, removed with the slot by the sweeper once the
// container is gone. The lock order is view, then pool.

const (
	launcherDir   = ".launcher"            // under slots_dir: the launcher's files, mounted read-only
	launcherMount = "/opt/spawnd-launcher" // where a warm server sees them
	handoffMount  = "/run/spawnd-handoff"  // where a warm server sees its hand-off directory
	claimSuffix   = ".claim"               // <slot>.claim: whose the warm server became
	handoffSuffix = ".handoff"             // <slot>.handoff: its hand-off directory
	warmSlotStem  = "warm."                // warm slots' names; '.' is never in an escaped name
	readyFile     = "ready"                // the launcher's "imported; waiting"
	startFile     = "start"                // the hand-off: environment and command line
)

// claim is whose a warm server became, as its claim file says.
type claim struct {
	User       string    `json:"user"`
	Server     string    `json:"server"`
	Container  string    `json:"container_id"`
	Env        string    `json:"env"`
	Profile    string    `json:"profile"`
	LockDigest string    `json:"lock_digest"`
	TokenHash  string    `json:"hub_token_sha256,omitempty"`
	ClaimedAt  time.Time `json:"claimed_at"`
}

// warmServer is a container of a pool nobody has taken.
type warmServer struct {
	id, slot, pool string
	lock           string // the lock digest it runs
	cmd0           string // the base name of the command it pre-imported
	ready          bool   // the launcher has imported the server and waits
	created        time.Time
}

// pool is the room of the core that keeps warm servers; its lock is its own.
type pool struct {
	mu     sync.Mutex
	warm   map[string]*warmServer // container ID -> warm, not taken
	claims map[string]claim       // container ID -> whose it became
	// taking: container ID -> taken by a start that has not written its
	// claim yet. Seen in that moment, a container of a pool with no claim
	// would look like a warm server of a previous daemon.
	taking  map[string]bool
	filling map[string]int    // pool -> warm servers being created
	cold    map[string]string // pool -> why its env cannot be pre-warmed
	taken   map[string]int    // pool -> starts that took a warm server
	missed  map[string]int    // pool -> starts that found none
	kick    chan struct{}
	waiting atomic.Int32 // user starts waiting for admission (a refill waits for none)
	// booting counts starts between their image and their answer, warm or
	// cold: no refill begins while one does (a refill's boot is a cold
	// boot's CPU, taken from the starts people wait for).
	booting atomic.Int32
}

func newPool() *pool {
	return &pool{warm: map[string]*warmServer{}, claims: map[string]claim{}, taking: map[string]bool{}, filling: map[string]int{},
		cold: map[string]string{}, taken: map[string]int{}, missed: map[string]int{}, kick: make(chan struct{}, 1)}
}

func (p *pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// usePools readies the host for warm servers: the slots directory (a
// shared mount, so a home mounted on a slot reaches the container), the
// launcher's files, the claims a previous daemon left.
func (m *Manager) usePools(b backend.Set) error {
	if len(m.cfg.Pools) == 0 {
		return nil
	}
	if !b.LateMounts {
		return fmt.Errorf("pools: the %s backend cannot hand a running server its home (its containers do not run on this host); remove pools, or use engine.backend: docker", b.Name)
	}
	if err := sameMountNamespace(); err != nil {
		return fmt.Errorf("pools: %w", err)
	}
	if err := checkPoolsFit(m.cfg.Pools, m.cfg.Profiles, hostMemory()); err != nil {
		return err
	}
	if m.slots == nil {
		s, err := newSlots(m.cfg.SlotsDir, m.log)
		if err != nil {
			return err
		}
		m.slots = s
	}
	if err := makeShared(m.cfg.SlotsDir); err != nil {
		return fmt.Errorf("pools: slots_dir %s must be a shared mount for homes to reach warm servers: %w", m.cfg.SlotsDir, err)
	}
	if err := writeLauncher(filepath.Join(m.cfg.SlotsDir, launcherDir)); err != nil {
		return fmt.Errorf("pools: writing the launcher: %w", err)
	}
	m.pool = newPool()
	entries, err := os.ReadDir(m.cfg.SlotsDir)
	if err != nil {
		return fmt.Errorf("slots_dir: %w", err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), claimSuffix) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.cfg.SlotsDir, e.Name()))
		var c claim
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		if err != nil || c.Container == "" {
			m.log.Warn("a claim file that cannot be read; the sweeper removes it with its slot", "file", e.Name(), "err", err)
			continue
		}
		m.pool.claims[c.Container] = c
	}
	return nil
}

// makeShared makes dir a mount point of its own with shared propagation
// (once: a daemon restart finds it so).
func makeShared(dir string) error {
	mounted, err := idmap.Mounted(dir)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mounting it on itself: %w", err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making it shared: %w", err)
	}
	return nil
}

func writeLauncher(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	for _, name := range launcher.Names {
		if err := writeFileAtomic(filepath.Join(dir, name), launcher.File(name), 0o755, -1, -1); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic writes path through a temporary file and a rename, owned
// by uid:gid when uid >= 0.
func writeFileAtomic(path string, b []byte, mode os.FileMode, uid, gid int) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil && uid >= 0 {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// hostMemory is the host's memory in bytes (0: unknown).
func hostMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// withClaim gives a taken warm server the labels of the server it became,
// from its claim: the rest of the core reads a container's labels.
func (m *Manager) withClaim(c backend.Container) (backend.Container, bool) {
	if m.pool == nil || c.Labels[labels.Pool] == "" {
		return c, true
	}
	m.pool.mu.Lock()
	cl, ok := m.pool.claims[c.ID]
	m.pool.mu.Unlock()
	if !ok {
		return c, false
	}
	l := make(map[string]string, len(c.Labels)+3)
	for k, v := range c.Labels {
		l[k] = v
	}
	l[labels.User], l[labels.Server] = cl.User, cl.Server
	if cl.TokenHash != "" {
		l[labels.HubToken] = cl.TokenHash
	}
	c.Labels = l
	return c, true
}

// isSynced: the first reconcile with the engine is done.
func (m *Manager) isSynced() bool {
	select {
	case <-m.synced:
		return true
	default:
		return false
	}
}

// observeWarm applies a container of a pool that nobody took to the pool:
// at the first sync, a previous daemon's warm servers join it (or, if a
// home is on their slot, are removed); later, an ended one leaves it.
func (m *Manager) observeWarm(c backend.Container) {
	p := m.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.warm[c.ID]
	switch {
	case p.taking[c.ID]:
		// A start took it and is writing its claim; never back in the pool.
	case w == nil && m.isSynced():
		// Once synced, every warm server of ours is in the pool from the
		// moment makeWarm has its ID; an unknown one is one makeWarm is
		// about to register (its start event can come first). Counted
		// here too, it would be counted twice, and the pool trimmed a
		// ready server as extra.
	case c.State == backend.Running && w == nil:
		// A warm server of a previous daemon: kept if its launcher is ready,
		// unless a home is mounted on its slot. Then it was taken and its
		// claim is lost: it is somebody's, nobody knows whose, and it must
		// never be handed to anyone else.
		slot := c.Labels[labels.HomeSlot]
		if mounted, err := idmap.Mounted(m.slots.path(slot)); err != nil || mounted {
			m.log.Error("a pool container holds a home but has no claim; removing it (its person's files stay in their home)",
				"container_id", short(c.ID), "slot", slot, "err", err)
			ws := &warmServer{id: c.ID, slot: slot, pool: c.Labels[labels.Pool]}
			m.bg.Add(1)
			go func() {
				defer m.bg.Done()
				m.removeWarm(m.baseCtx, ws)
			}()
			return
		}
		ready := fileExists(m.slots.path(slot) + handoffSuffix + "/" + readyFile)
		p.warm[c.ID] = &warmServer{id: c.ID, slot: slot, pool: c.Labels[labels.Pool], lock: c.Labels[labels.LockDigest],
			cmd0: c.Labels[labels.PoolCmd], ready: ready, created: c.Created}
	case c.State != backend.Running && c.State != backend.Created && w != nil:
		m.log.Info("a warm server ended before anyone took it; the pool replaces it", "container_id", short(c.ID),
			"pool", w.pool, "state", string(c.State), "exit_code", c.ExitCode)
		delete(p.warm, c.ID)
		p.wake()
	}
}

// forgetWarm drops a container the engine no longer has.
func (p *pool) forget(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.warm[id]; ok {
		delete(p.warm, id)
		p.wake()
	}
	delete(p.claims, id)
	delete(p.taking, id)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// take gives a start the ready warm server of its env, profile, lock and
// command, and nil when there is none (the start boots cold). Two starts
// racing for the last one: one gets it.
func (m *Manager) takeWarm(p startPlan) *warmServer {
	if m.pool == nil || len(p.shared) > 0 || len(p.cmd) == 0 {
		return nil // team folders are mounts a warm server does not have
	}
	name := p.envName + "/" + p.profileName
	pl := m.pool
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var best *warmServer
	for _, w := range pl.warm {
		if w.pool == name && w.ready && w.lock == p.env.LockDigest && w.cmd0 == filepath.Base(p.cmd[0]) &&
			(best == nil || w.created.Before(best.created)) {
			best = w
		}
	}
	if best == nil {
		if m.poolFor(name) != nil {
			pl.missed[name]++
			m.metrics.poolStarts.WithLabelValues(name, "cold").Inc()
			importing, other := 0, 0
			for _, w := range pl.warm {
				switch {
				case w.pool != name:
				case !w.ready:
					importing++
				default:
					other++ // ready, of another lock or command
				}
			}
			m.log.Info("no warm server was ready for this start; it boots cold", "user", bound(p.key.user), "pool", name,
				"importing", importing, "ready_other", other, "filling", pl.filling[name], "being_taken", len(pl.taking))
		}
		return nil
	}
	delete(pl.warm, best.id)
	pl.taking[best.id] = true
	pl.taken[name]++
	m.metrics.poolStarts.WithLabelValues(name, "warm").Inc()
	pl.wake() // refill
	return best
}

func (m *Manager) poolFor(name string) *PoolConfig {
	for i := range m.cfg.Pools {
		if m.cfg.Pools[i].Name() == name {
			return &m.cfg.Pools[i]
		}
	}
	return nil
}

// startWarm hands a warm server its person: home on the slot, the claim,
// the record, the hand-off; then it waits for the server to listen. On an
// error the caller discards the warm server and starts cold.
func (m *Manager) startWarm(ctx context.Context, p startPlan, rec *record, w *warmServer, home backend.Home) (Server, error) {
	slot := m.slots.path(w.slot)
	if err := m.mountHome(home, slot, p.env.User); err != nil {
		return Server{}, err
	}
	cl := claim{User: p.key.user, Server: p.key.server, Container: w.id, Env: p.envName, Profile: p.profileName,
		LockDigest: p.env.LockDigest, TokenHash: p.tokenHash, ClaimedAt: time.Now().UTC()}
	b, _ := json.Marshal(cl)
	if err := writeFileAtomic(slot+claimSuffix, b, 0o600, -1, -1); err != nil {
		return Server{}, fmt.Errorf("writing the claim: %w", err)
	}
	m.pool.mu.Lock()
	m.pool.claims[w.id] = cl
	delete(m.pool.taking, w.id)
	m.pool.mu.Unlock()

	// The rest of the boot takes CPU: at most max_concurrent_starts warm
	// servers finish at once, in the order their starts came. Sharing the
	// CPU among a whole class would have every one of them finish at the
	// end (measured: 100 warm starts all ready within 0.2 s of each other,
	// 22 s after the first request); in turn, half the class is ready in
	// half the time.
	release, err := m.finishTurn(ctx, rec)
	if err != nil {
		return Server{}, err
	}
	defer release()

	spec := containerSpec(&m.cfg, p, home)
	if m.promote != nil {
		// It booted at the lowest CPU weight; from now on it is a person's.
		if err := m.promote(ctx, w.id, spec); err != nil {
			return Server{}, err
		}
	}
	env := make(map[string]string, len(spec.Env))
	for _, kv := range spec.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	hand, _ := json.Marshal(map[string]any{"env": env, "argv": spec.Cmd, "cwd": p.env.Home})
	secrets := secretValues(spec.Env)
	m.view.mu.Lock()
	rec.containerID, rec.created = w.id, time.Now()
	rec.srv.ContainerID = w.id
	rec.secrets = secrets
	m.view.mu.Unlock()
	rec.progress.add(ProgressEvent{Progress: 50, Step: StepCreated, Message: "A warm server was ready; it gets your home and starts"})
	if err := writeFileAtomic(filepath.Join(slot+handoffSuffix, startFile), hand, 0o400, p.env.User.UID, p.env.User.GID); err != nil {
		return Server{}, fmt.Errorf("handing the server its start: %w", err)
	}
	c, err := m.rt.Inspect(ctx, w.id)
	if err != nil {
		return Server{}, m.engineErr("inspecting the warm server", err)
	}
	m.view.mu.Lock()
	m.observeLocked(rec, c)
	if rec.srv.State == StateRunning && !rec.srv.Ready && rec.probe == nil {
		m.probeLocked(rec)
	}
	m.view.mu.Unlock()
	if err := m.waitListening(ctx, rec, w.id, secrets); err != nil {
		return Server{}, err
	}
	m.view.mu.Lock()
	defer m.view.mu.Unlock()
	rec.srv.Warm = true
	return rec.srv, nil
}

// finishTurn waits until a warm server may finish its boot, in the order
// the starts asked (m.finish).
func (m *Manager) finishTurn(ctx context.Context, rec *record) (release func(), err error) {
	qctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	err = m.finish.wait(qctx, func() {
		rec.progress.add(ProgressEvent{Progress: 45, Step: StepHome, Message: "Your warm server is next in line to start"})
	})
	if err != nil {
		if ctx.Err() == nil {
			return nil, errorf(ErrUnavailable, "%d warm servers are starting and this start waited %s for its turn; try again shortly (max_concurrent_starts)", m.cfg.MaxConcurrentStarts, m.cfg.StartTimeout)
		}
		return nil, ctx.Err()
	}
	return m.finish.done, nil
}

// turns lets n holders at once, the others in the order they asked (a
// channel semaphore's order is its goroutines' order of arrival at the
// send, which a caller cannot see).
type turns struct {
	mu    sync.Mutex
	free  int
	queue []chan struct{}
}

func newTurns(n int) *turns { return &turns{free: n} }

// wait returns once the caller holds a turn, or ctx's error; queued is
// called if it must wait, once it is in line.
func (t *turns) wait(ctx context.Context, queued func()) error {
	t.mu.Lock()
	if t.free > 0 && len(t.queue) == 0 {
		t.free--
		t.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	t.queue = append(t.queue, ch)
	t.mu.Unlock()
	queued()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		t.mu.Lock()
		defer t.mu.Unlock()
		for i, c := range t.queue {
			if c == ch {
				t.queue = append(t.queue[:i], t.queue[i+1:]...)
				return ctx.Err()
			}
		}
		// Given the turn as the deadline passed: pass it on.
		t.releaseLocked()
		return ctx.Err()
	}
}

// done gives the turn back: to the first in line, if any.
func (t *turns) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.releaseLocked()
}

func (t *turns) releaseLocked() {
	if len(t.queue) > 0 {
		close(t.queue[0])
		t.queue = t.queue[1:]
		return
	}
	t.free++
}

// mountHome mounts home on slot: idmapped when the home has an owner of
// its own on the host (the server sees it as the image's user), a bind
// otherwise.
func (m *Manager) mountHome(home backend.Home, slot string, u EnvUser) error {
	if home.Owner != nil {
		dir, err := openNoFollow(home.Source)
		if err != nil {
			return err
		}
		defer dir.Close()
		return idmap.Mount(dir, slot, idmap.Mapping{HostUID: home.Owner.UID, HostGID: home.Owner.GID, InUID: u.UID, InGID: u.GID})
	}
	if err := unix.Mount(home.Source, slot, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mounting the home on the warm server's slot: %w", err)
	}
	return nil
}

// discardWarm removes a warm server whose hand-off failed, with its mount,
// claim and record; the start goes on cold.
func (m *Manager) discardWarm(ctx context.Context, rec *record, w *warmServer) {
	m.view.mu.Lock()
	if rec.containerID == w.id {
		rec.stopProbe()
		rec.containerID, rec.srv.ContainerID = "", ""
	}
	m.view.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := m.rt.Remove(rctx, w.id, 0); err != nil {
		m.log.Error("removing a warm server whose hand-off failed", "container_id", short(w.id), "err", err)
	}
	m.pool.forget(w.id)
	m.slots.wake()
}

// poolLoop keeps every pool at its size until ctx ends, after the first sync.
func (m *Manager) poolLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-m.synced:
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.fillPools(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.pool.kick:
		case <-t.C:
		}
	}
}

// fillPools starts the warm servers the pools lack and removes those they
// have too many of, or of an old lock. A refill takes an admission slot
// only while no start waits for one: a person's start always goes first.
func (m *Manager) fillPools(ctx context.Context) {
	now := time.Now()
	cur := m.envs.current()
	for i := range m.cfg.Pools {
		pc := &m.cfg.Pools[i]
		name := pc.Name()
		env, ok := cur[pc.Env]
		pl := m.pool
		pl.mu.Lock()
		why := pl.cold[name]
		var have, stale []*warmServer
		for _, w := range pl.warm {
			if w.pool != name {
				continue
			}
			if !ok || w.lock != env.LockDigest {
				stale = append(stale, w)
				delete(pl.warm, w.id)
				continue
			}
			have = append(have, w)
		}
		want := pc.want(now)
		if why != "" || !ok {
			want = 0
		}
		var extra []*warmServer
		if n := len(have) + pl.filling[name] - want; n > 0 && len(have) > 0 {
			// Extra: those still importing first, then the newest.
			sort.Slice(have, func(a, b int) bool {
				if have[a].ready != have[b].ready {
					return !have[a].ready
				}
				return have[a].created.After(have[b].created)
			})
			extra = have[:min(n, len(have))]
			for _, w := range extra {
				delete(pl.warm, w.id)
			}
		}
		lack := want - len(have) - pl.filling[name] + len(extra)
		pl.mu.Unlock()
		if len(stale)+len(extra) > 0 {
			m.log.Info("removing warm servers", "pool", name, "of_an_old_lock", len(stale), "beyond_its_size", len(extra), "want", want)
		}
		for _, w := range append(stale, extra...) {
			m.removeWarm(ctx, w)
		}
		for ; lack > 0; lack-- {
			if pl.waiting.Load() > 0 || pl.booting.Load() > 0 {
				return
			}
			select {
			case m.admit <- struct{}{}:
			default:
				return // every admission slot is busy; try again soon
			}
			pl.mu.Lock()
			pl.filling[name]++
			pl.mu.Unlock()
			m.bg.Add(1)
			go func() {
				defer m.bg.Done()
				defer func() { <-m.admit }()
				registered, err := m.makeWarm(ctx, *pc, env)
				pl.mu.Lock()
				if !registered {
					pl.filling[name]--
				}
				if err != nil && !errors.Is(err, context.Canceled) {
					var cold *coldEnv
					if errors.As(err, &cold) {
						if pl.cold[name] == "" {
							m.log.Warn("this env cannot be pre-warmed; its starts boot cold", "pool", name, "why", cold.why)
						}
						pl.cold[name] = cold.why
					} else {
						m.log.Warn("a warm server could not be made", "pool", name, "err", err)
					}
				}
				pl.mu.Unlock()
				if err == nil {
					pl.wake()
				}
			}()
		}
	}
}

// coldEnv is an env the launcher cannot pre-warm, and why.
type coldEnv struct{ why string }

func (e *coldEnv) Error() string { return "cannot pre-warm: " + e.why }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// warmSpec is a warm server's container: a server's, hardening and limits
// included, with no person in it: no user, token or home, an empty slot at
// the home, its hand-off directory, the launcher.
func (m *Manager) warmSpec(pc PoolConfig, env EnvConfig, slot string) backend.ContainerSpec {
	prof := m.config().Profiles[pc.Profile]
	vars := map[string]string{"HOME": env.Home, "USER": env.User.Name}
	for _, kv := range env.Environment {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var envList []string
	for _, k := range sortedKeys(vars) {
		envList = append(envList, k+"="+vars[k])
	}
	cmd0 := ""
	if len(env.Cmd) > 0 {
		cmd0 = filepath.Base(env.Cmd[0])
	}
	s := backend.ContainerSpec{
		Name:  "spawnd-" + m.cfg.Instance + "-warm." + randomHex(6),
		Image: env.Image,
		Labels: map[string]string{
			labels.Managed: "true", labels.Instance: m.cfg.Instance, labels.Pool: pc.Name(), labels.PoolCmd: cmd0,
			labels.Env: pc.Env, labels.Profile: pc.Profile, labels.LockDigest: env.LockDigest,
			labels.HomeScheme: HomeScheme, labels.Port: strconv.Itoa(env.Port), labels.HomeSlot: slot,
		},
		Env:        envList,
		Cmd:        launcher.Cmd(launcherMount, handoffMount, false, env.Cmd),
		User:       fmt.Sprintf("%d:%d", env.User.UID, env.User.GID),
		WorkingDir: "/",
		Mounts: []backend.Mount{
			{Source: m.slots.path(slot), Target: env.Home, Late: true},
			{Source: m.slots.path(slot) + handoffSuffix, Target: handoffMount},
			{Source: filepath.Join(m.cfg.SlotsDir, launcherDir), Target: launcherMount, ReadOnly: true},
		},
		Port:      env.Port,
		Network:   m.cfg.Network.Name,
		Memory:    prof.MemoryBytes(),
		NanoCPUs:  int64(prof.CPUs * 1e9),
		PidsLimit: prof.Pids,

		MemoryReservation: prof.memoryReservation,
		CPUReservation:    int64(prof.CPUReservation * 1e9),
		ShmSize:           prof.shmBytes,
		Placement:         prof.Placement,
		Background:        true,
	}
	if m.cfg.Network.Mode == "publish" {
		s.PublishIP = m.cfg.Network.PublishIP
	}
	return s
}

// makeWarm starts one warm server and waits until its launcher is ready.
// Once its container runs it counts in the pool's warm servers instead of
// its filling ones (registered), never in both.
func (m *Manager) makeWarm(ctx context.Context, pc PoolConfig, env EnvConfig) (registered bool, err error) {
	slot := warmSlotStem + randomHex(6)
	path := m.slots.path(slot)
	m.slots.hold(slot)
	defer func() {
		m.slots.settled(slot)
		m.slots.wake()
	}()
	if err := os.Mkdir(path, 0); err != nil {
		return false, fmt.Errorf("making the slot: %w", err)
	}
	hand := path + handoffSuffix
	if err := os.Mkdir(hand, 0o700); err != nil {
		return false, fmt.Errorf("making the hand-off directory: %w", err)
	}
	if err := os.Chown(hand, env.User.UID, env.User.GID); err != nil {
		return false, fmt.Errorf("giving the hand-off directory to the server's user: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.StartTimeout)
	defer cancel()
	spec := m.warmSpec(pc, env, slot)
	c, err := m.rt.Run(ctx, spec)
	if err != nil {
		return false, m.engineErr("starting a warm server", err)
	}
	w := &warmServer{id: c.ID, slot: slot, pool: pc.Name(), lock: env.LockDigest, cmd0: spec.Labels[labels.PoolCmd], created: time.Now()}
	m.pool.mu.Lock()
	m.pool.warm[c.ID] = w
	m.pool.filling[pc.Name()]--
	m.pool.mu.Unlock()
	ready := filepath.Join(hand, readyFile)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if fileExists(ready) {
			m.pool.mu.Lock()
			w.ready = true
			m.pool.mu.Unlock()
			return true, nil
		}
		m.pool.mu.Lock()
		_, still := m.pool.warm[c.ID]
		m.pool.mu.Unlock()
		if !still {
			return true, nil // taken or removed meanwhile (a pool that shrank)
		}
		if got, err := m.rt.Inspect(ctx, c.ID); err == nil && got.State != backend.Running && got.State != backend.Created {
			tail, _ := m.rt.Logs(context.WithoutCancel(ctx), c.ID, 5)
			m.removeWarm(ctx, w)
			if got.ExitCode == launcher.ExitCold {
				return true, &coldEnv{why: lastLine(tail)}
			}
			return true, fmt.Errorf("the warm server exited before it was ready (state %s, exit code %d): %s", got.State, got.ExitCode, lastLine(tail))
		}
		select {
		case <-ctx.Done():
			m.removeWarm(ctx, w)
			return true, fmt.Errorf("the warm server was not ready within start_timeout (%s): %w", m.cfg.StartTimeout, ctx.Err())
		case <-tick.C:
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// removeWarm removes a warm server nobody took.
func (m *Manager) removeWarm(ctx context.Context, w *warmServer) {
	m.pool.mu.Lock()
	delete(m.pool.warm, w.id)
	m.pool.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := m.rt.Remove(rctx, w.id, 0); err != nil {
		m.log.Warn("removing a warm server", "container_id", short(w.id), "err", err)
	}
	m.slots.wake()
}

// PoolStatus is one pool as spawnd ps, the API and the metrics report it.
type PoolStatus struct {
	Name    string `json:"name"`
	Env     string `json:"env"`
	Profile string `json:"profile"`
	Want    int    `json:"want"`    // warm servers it keeps now
	Ready   int    `json:"ready"`   // warm and waiting
	Warming int    `json:"warming"` // booting (created, or importing)
	Taken   int    `json:"taken"`   // starts that took a warm server since the daemon started
	Missed  int    `json:"missed"`  // starts of this env and profile that found none
	Cold    string `json:"cold,omitempty"`
}

// Pools reports every pool.
func (m *Manager) Pools() []PoolStatus {
	if m.pool == nil {
		return nil
	}
	now := time.Now()
	pl := m.pool
	pl.mu.Lock()
	defer pl.mu.Unlock()
	out := make([]PoolStatus, 0, len(m.cfg.Pools))
	for _, pc := range m.cfg.Pools {
		st := PoolStatus{Name: pc.Name(), Env: pc.Env, Profile: pc.Profile, Want: pc.want(now),
			Warming: pl.filling[pc.Name()], Taken: pl.taken[pc.Name()], Missed: pl.missed[pc.Name()], Cold: pl.cold[pc.Name()]}
		for _, w := range pl.warm {
			switch {
			case w.pool != pc.Name():
			case w.ready:
				st.Ready++
			default:
				st.Warming++
			}
		}
		out = append(out, st)
	}
	return out
}

// removeSlotFiles removes what belongs to a slot beside it (its claim, its
// hand-off directory).
func removeSlotFiles(slotPath string) error {
	err := os.RemoveAll(slotPath + handoffSuffix)
	if rerr := os.Remove(slotPath + claimSuffix); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
