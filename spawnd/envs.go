package spawnd

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/envs"
)

// envTable holds the configured envs. An env configured by its spec
// (envs.<name>.spec) takes its image, lock digest, user and command from the
// spec's lock. A watcher (watch) looks at the lock files once a second and
// switches an env to a new lock only once that lock passes the startup rules
// and its image is on the engine: `spawnd lock` alone, or a build still
// running, never makes a start fail. Servers of the old lock then show as
// outdated. Reads (get, current) never touch the disk or the engine.
type envTable struct {
	log *slog.Logger

	mu   sync.RWMutex
	envs map[string]EnvConfig
	// seen is the mtime of each spec's lock file that was last dealt with
	// (switched to, or refused); a lock waiting for its image is not seen
	// yet, so it is looked at again on the next tick.
	seen map[string]time.Time
	// waiting names the lock digest each env waits for an image of, to log
	// the wait once.
	waiting map[string]string
}

// lockCheckEvery is how often the lock files are looked at.
const lockCheckEvery = time.Second

func newEnvTable(cfg map[string]EnvConfig, log *slog.Logger) *envTable {
	t := &envTable{log: log, envs: maps.Clone(cfg), seen: map[string]time.Time{}, waiting: map[string]string{}}
	for name, e := range cfg {
		if e.Spec == "" {
			continue
		}
		if fi, err := os.Stat(envs.LockPath(e.Spec)); err == nil {
			t.seen[name] = fi.ModTime() // the config was validated from this lock
		}
	}
	return t
}

// get returns an env as it is now.
func (t *envTable) get(name string) (EnvConfig, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.envs[name]
	return e, ok
}

// current returns every env as it is now.
func (t *envTable) current() map[string]EnvConfig {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return maps.Clone(t.envs)
}

// imageChecker says whether an image is on the engine (backend.Runtime.CheckImage).
type imageChecker func(ctx context.Context, ref string) error

// watch refreshes the envs from their locks every lockCheckEvery until ctx ends.
func (t *envTable) watch(ctx context.Context, check imageChecker) {
	tick := time.NewTicker(lockCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.refresh(ctx, check)
		}
	}
}

// refresh looks at every spec's lock once.
func (t *envTable) refresh(ctx context.Context, check imageChecker) {
	t.mu.RLock()
	names := sortedKeys(t.envs)
	t.mu.RUnlock()
	for _, name := range names {
		t.refreshOne(ctx, name, check)
	}
}

func (t *envTable) refreshOne(ctx context.Context, name string, check imageChecker) {
	t.mu.RLock()
	e, seen := t.envs[name], t.seen[name]
	t.mu.RUnlock()
	if e.Spec == "" {
		return
	}
	lockPath := envs.LockPath(e.Spec)
	fi, err := os.Stat(lockPath)
	if err != nil || fi.ModTime().Equal(seen) {
		return
	}
	ne, err := fromLock(e)
	if err == nil {
		// The same rules as at startup: a rebuilt lock cannot make servers
		// run as root, or as a user name or home the config would refuse.
		err = ne.checkRunAs("envs." + name)
	}
	if err != nil {
		// Keep serving the last good lock; say so once per change of the file.
		t.mu.Lock()
		t.seen[name] = fi.ModTime()
		t.mu.Unlock()
		t.log.Error("the env's new lock is refused; the previous lock keeps serving", "env", name, "lock", lockPath, "err", err)
		return
	}
	if ne.LockDigest == e.LockDigest {
		t.mu.Lock()
		t.seen[name] = fi.ModTime() // rewritten, same lock
		delete(t.waiting, name)
		t.mu.Unlock()
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = check(cctx, ne.Image)
	cancel()
	if err != nil {
		t.mu.Lock()
		first := t.waiting[name] != ne.LockDigest
		t.waiting[name] = ne.LockDigest
		t.mu.Unlock()
		if first {
			msg := "the env's new lock has no image yet; the previous lock keeps serving until it is built"
			if !errdefs.IsNotFound(err) {
				msg = "cannot check the image of the env's new lock; the previous lock keeps serving"
			}
			t.log.Warn(msg, "env", name, "image", ne.Image, "build", fmt.Sprintf("spawnd build %s", e.Spec), "err", err)
		}
		return
	}
	t.mu.Lock()
	t.envs[name], t.seen[name] = ne, fi.ModTime()
	delete(t.waiting, name)
	t.mu.Unlock()
	t.log.Info("env switched to its new lock", "env", name, "image", ne.Image, "lock_digest", ne.LockDigest, "previous", e.LockDigest)
}

// fromLock fills an env from its spec's lock.
func fromLock(e EnvConfig) (EnvConfig, error) {
	l, err := envs.ReadLock(envs.LockPath(e.Spec))
	if err != nil {
		return e, fmt.Errorf("reading the lock of %s: %w; build the env first (spawnd build %s)", e.Spec, err, e.Spec)
	}
	e.Image, e.LockDigest = l.Tag(), l.Digest
	if e.Description == "" {
		e.Description = l.Description
	}
	e.User = EnvUser{Name: l.User.Name, UID: l.User.UID, GID: l.User.GID}
	e.Home = "/home/" + l.User.Name
	if len(l.Cmd) > 0 {
		e.Cmd = l.Cmd
	}
	return e, nil
}
