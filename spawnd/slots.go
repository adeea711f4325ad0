package spawnd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/idmap"
)

// slots give servers their people's homes through idmapped mounts
// (home_owner system or range). Each start gets a slot of its own,
// <slots_dir>/<container name>-<random>: an empty directory that only root
// may enter, on which the home is mounted idmapped (the person's uid shown
// as the image's user) before the container, which bind-mounts the slot,
// is created. The container carries the slot's name in a label; a slot no
// container names is unmounted and removed by the sweeper. If a mount is
// ever missing (after a reboot), the server finds a slot it cannot write to,
// or none: it fails to start rather than write a home nobody keeps.
type slots struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]bool // slots mounted for starts whose container may not exist yet
	kick    chan struct{}
}

func newSlots(dir string, log *slog.Logger) (*slots, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("slots_dir: creating %s: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("slots_dir: %w", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || st.Uid != uint32(os.Geteuid()) || fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("slots_dir: %s must be a directory of the daemon's user that nobody else may write (mode %#o, uid %d); fix it: chown root:root %s && chmod 700 %s", dir, fi.Mode().Perm(), st.Uid, dir, dir)
	}
	return &slots{dir: dir, log: log, pending: map[string]bool{}, kick: make(chan struct{}, 1)}, nil
}

// probe makes and removes one idmapped mount of dir, so that a kernel or a
// file system that cannot make them is found when the daemon starts, not
// at a person's first start.
func (s *slots) probe(dir string, m idmap.Mapping) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	p, err := os.MkdirTemp(s.dir, ".probe-")
	if err != nil {
		return err
	}
	defer os.Remove(p)
	if err := idmap.Mount(f, p, m); err != nil {
		return err
	}
	return idmap.Unmount(p)
}

// attach mounts home, owned on the host by its Owner, on a new slot for the
// container named container, shown to the server as user uid:gid. It
// returns the slot's name; settled must be called once the container
// exists or its start has failed.
func (s *slots) attach(home backend.Home, uid, gid int, container string) (string, error) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := container + "-" + hex.EncodeToString(b)
	s.mu.Lock()
	s.pending[name] = true
	s.mu.Unlock()
	path := filepath.Join(s.dir, name)
	fail := func(err error) (string, error) {
		_ = idmap.Unmount(path)
		_ = os.Remove(path)
		s.settled(name)
		return "", internal(err, "the user's home could not be given to their server; an admin can find why in the daemon's log")
	}
	if err := os.Mkdir(path, 0); err != nil {
		return fail(fmt.Errorf("making the home slot %s: %w", path, err))
	}
	dir, err := openNoFollow(home.Source)
	if err != nil {
		return fail(err)
	}
	defer dir.Close()
	m := idmap.Mapping{HostUID: home.Owner.UID, HostGID: home.Owner.GID, InUID: uid, InGID: gid}
	if err := idmap.Mount(dir, path, m); err != nil {
		return fail(err)
	}
	return name, nil
}

// hold marks a slot pending (a warm server's, made before its container).
func (s *slots) hold(name string) {
	s.mu.Lock()
	s.pending[name] = true
	s.mu.Unlock()
}

// path is where the slot name is on the host.
func (s *slots) path(name string) string { return filepath.Join(s.dir, name) }

// settled ends a slot's pending time: from now on the sweeper keeps it only
// while a container names it.
func (s *slots) settled(name string) {
	s.mu.Lock()
	delete(s.pending, name)
	s.mu.Unlock()
}

// wake asks the sweeper to run soon.
func (s *slots) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// sweep unmounts and removes every slot no live container of list names
// (created or running; an ended one's slot goes) and no start holds. The order makes it safe against starts in flight: the slots
// are read first, then the pending ones, then the containers; a slot read
// in the first step was pending before it, so it is either still pending
// or its container (if its start succeeded) is in the listing.
func (s *slots) sweep(ctx context.Context, list func(context.Context) ([]backend.Container, error)) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		s.log.Warn("reading slots_dir", "err", err)
		return
	}
	s.mu.Lock()
	keep := make(map[string]bool, len(s.pending))
	for n := range s.pending {
		keep[n] = true
	}
	s.mu.Unlock()
	cs, err := list(ctx)
	if err != nil {
		return // the engine is away: sweep next time
	}
	for _, c := range cs {
		// A server that ended holds its home no longer: its slot's mount
		// goes now, not when the container is removed (spawnd never starts
		// an ended container again; its next start makes a new one).
		if n := c.Labels[labels.HomeSlot]; n != "" && c.State != backend.Exited && c.State != backend.Dead {
			keep[n] = true
		}
	}
	for _, e := range entries {
		name := e.Name()
		if name == launcherDir {
			continue
		}
		// A slot's claim and hand-off directory go with it.
		if slot, ok := slotOf(name); ok {
			if !keep[slot] && !fileExists(filepath.Join(s.dir, slot)) {
				if err := removeSlotFiles(filepath.Join(s.dir, slot)); err != nil {
					s.log.Warn("removing what a removed home slot left", "slot", slot, "err", err)
				}
			}
			continue
		}
		if keep[name] || !e.IsDir() {
			continue
		}
		p := filepath.Join(s.dir, name)
		if err := idmap.Unmount(p); err != nil {
			s.log.Warn("unmounting a home slot no server uses", "slot", name, "err", err)
			continue
		}
		if err := removeSlotFiles(p); err != nil {
			s.log.Warn("removing a home slot's claim and hand-off", "slot", name, "err", err)
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("removing a home slot no server uses", "slot", name, "err", err)
		}
	}
}

// run sweeps when woken and every interval until ctx ends.
func (s *slots) run(ctx context.Context, interval time.Duration, list func(context.Context) ([]backend.Container, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s.sweep(sctx, list)
		cancel()
	}
}

// slotOf is the slot a claim file or hand-off directory belongs to.
func slotOf(name string) (string, bool) {
	for _, suf := range []string{claimSuffix, handoffSuffix, claimSuffix + ".tmp"} {
		if s, ok := strings.CutSuffix(name, suf); ok {
			return s, true
		}
	}
	return "", false
}

// openNoFollow opens the directory path without following a symlink at its
// last element (a home's parent is root's; the home is the person's).
func openNoFollow(path string) (*os.File, error) {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("opening the home's parent: %w", err)
	}
	defer root.Close()
	f, err := root.OpenFile(filepath.Base(path), os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the home %s: %w", path, err)
	}
	return f, nil
}

// hostMountNS is the mount namespace the engine is taken to run in.
var hostMountNS = "/proc/1/ns/mnt"

// sameMountNamespace refuses a daemon whose mount namespace is not the
// host's: the engine would never see the homes it mounts on slots, and
// every server would find an empty slot it cannot write to.
func sameMountNamespace() error {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	host, err2 := os.Readlink(hostMountNS)
	if errors.Is(err2, fs.ErrPermission) {
		// PID 1 is not ours to read (a sandbox that hides it): nothing to
		// compare with; a server whose home did not arrive fails to start.
		return nil
	}
	if err1 != nil || err2 != nil {
		return fmt.Errorf("cannot compare this daemon's mount namespace with the host's (%v, %v); run spawnd as root on the host", err1, err2)
	}
	if self != host {
		return fmt.Errorf("spawnd runs in a mount namespace of its own (%s, the host's is %s), so the engine would not see the homes it mounts: run it on the host without mount sandboxing (the shipped systemd unit has none; in a container, use home_owner: env)", self, host)
	}
	return nil
}
