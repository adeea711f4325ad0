package spawnd

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spawnd/spawnd/envs"
)

// envTable holds the configured envs. An env configured by its spec (envs.<name>.spec)
// takes its image, lock digest, user and command from the spec's lock, and is
// re-read when the lock file changes, so a `spawnd build` is picked up by the
// next start without a restart, and running servers of the old lock show as
// outdated.
type envTable struct {
	log     *slog.Logger
	mu      sync.RWMutex
	envs    map[string]EnvConfig
	mtime   map[string]time.Time
	checked map[string]time.Time // when the lock file was last looked at
}

// lockCheckEvery bounds how often a lock file is looked at: status answers
// mark outdated servers without a stat per request.
const lockCheckEvery = time.Second

func newEnvTable(cfg map[string]EnvConfig, log *slog.Logger) *envTable {
	t := &envTable{log: log, envs: map[string]EnvConfig{}, mtime: map[string]time.Time{}, checked: map[string]time.Time{}}
	for k, v := range cfg {
		t.envs[k] = v
	}
	return t
}

// get returns an env, refreshed from its lock if the lock changed.
func (t *envTable) get(name string) (EnvConfig, bool) {
	t.mu.RLock()
	e, ok := t.envs[name]
	seen, checked := t.mtime[name], t.checked[name]
	t.mu.RUnlock()
	if !ok || e.Spec == "" || time.Since(checked) < lockCheckEvery {
		return e, ok
	}
	t.mu.Lock()
	t.checked[name] = time.Now()
	t.mu.Unlock()
	fi, err := os.Stat(envs.LockPath(e.Spec))
	if err != nil || fi.ModTime().Equal(seen) {
		return e, ok
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
		t.mtime[name] = fi.ModTime()
		t.mu.Unlock()
		t.log.Error("the env's new lock is refused; the previous lock keeps serving", "env", name, "lock", envs.LockPath(e.Spec), "err", err)
		return e, ok
	}
	t.mu.Lock()
	t.envs[name], t.mtime[name] = ne, fi.ModTime()
	t.mu.Unlock()
	return ne, true
}

// current returns every env, each refreshed from its lock as get does.
func (t *envTable) current() map[string]EnvConfig {
	t.mu.RLock()
	names := sortedKeys(t.envs)
	t.mu.RUnlock()
	out := make(map[string]EnvConfig, len(names))
	for _, n := range names {
		if e, ok := t.get(n); ok {
			out[n] = e
		}
	}
	return out
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
