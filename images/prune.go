package images

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// PruneEngine is what Prune needs of the engine (spawnd/docker.Engine has it).
type PruneEngine interface {
	ListImages(ctx context.Context, key string) ([]backend.ImageSummary, error)
	ImagesInUse(ctx context.Context) (map[string]string, error)
	RemoveImage(ctx context.Context, ref string) error
}

// PruneOptions say what Prune keeps.
type PruneOptions struct {
	// Keep is how many locks of each env keep their image, newest first
	// (by the lock's time). Default 3.
	Keep int
	// Current names each env's current lock digest (from the daemon's
	// config); its image is always kept.
	Current map[string]string
	// Envs, when set, limits the prune to these envs' images.
	Envs []string
	// DryRun lists what would go and removes nothing.
	DryRun bool
}

// PrunedImage is an image Prune removed (or would), or kept, and why.
type PrunedImage struct {
	ID, Ref, Env, LockDigest string
	Size                     int64
	Why                      string
}

// PruneResult is what Prune did.
type PruneResult struct {
	Removed, Kept []PrunedImage
	Freed         int64 // bytes, by the engine's size of each image removed
}

// Prune removes the env images spawnd made that nothing needs: an env
// image (labelled io.spawnd.env) goes unless a container (running or not)
// uses it, it is its env's current lock, or it is among the env's last
// Keep locks; the lock stage images and untagged leftovers of builds go
// unless a container uses them. It never forces a removal: an image the
// engine says is in use stays. It refuses while a build holds the build
// lock (BuildLock), so a build's images are never pulled from under it.
func Prune(ctx context.Context, eng PruneEngine, opts PruneOptions) (PruneResult, error) {
	if opts.Keep <= 0 {
		opts.Keep = 3
	}
	unlock, err := lockBuilds(true)
	if err != nil {
		return PruneResult{}, err
	}
	defer unlock()
	all, err := eng.ListImages(ctx, labels.Env)
	if err != nil {
		return PruneResult{}, err
	}
	imgs := all[:0:0]
	for _, im := range all {
		if len(opts.Envs) == 0 || slices.Contains(opts.Envs, im.Labels[labels.Env]) {
			imgs = append(imgs, im)
		}
	}
	inUse, err := eng.ImagesInUse(ctx)
	if err != nil {
		return PruneResult{}, err
	}
	// The last Keep locks of each env, by the lock's time.
	type lockAt struct{ digest, created string }
	locks := map[string][]lockAt{}
	for _, im := range imgs {
		if im.Labels[labels.Stage] == "" && len(im.Tags) > 0 && im.Labels[labels.LockDigest] != "" {
			env := im.Labels[labels.Env]
			locks[env] = append(locks[env], lockAt{im.Labels[labels.LockDigest], im.Labels[ocispec.AnnotationCreated]})
		}
	}
	recent := map[string]bool{} // env + "\x00" + lock digest
	for env, ls := range locks {
		slices.SortFunc(ls, func(a, b lockAt) int {
			return cmp.Or(cmp.Compare(b.created, a.created), cmp.Compare(a.digest, b.digest))
		})
		ls = slices.CompactFunc(ls, func(a, b lockAt) bool { return a.digest == b.digest })
		for i := 0; i < len(ls) && i < opts.Keep; i++ {
			recent[env+"\x00"+ls[i].digest] = true
		}
	}
	var res PruneResult
	for _, im := range imgs {
		env, digest := im.Labels[labels.Env], im.Labels[labels.LockDigest]
		p := PrunedImage{ID: im.ID, Env: env, LockDigest: digest, Size: im.Size, Ref: im.ID}
		if len(im.Tags) > 0 {
			p.Ref = im.Tags[0]
		}
		switch {
		case inUse[im.ID] != "":
			p.Why = "used by container " + inUse[im.ID]
		case im.Labels[labels.Stage] != "":
			p.Why = "the lock stage of env " + env + " (made again by the next relock)"
		case len(im.Tags) == 0:
			p.Why = "an untagged leftover of a build"
		case digest != "" && opts.Current[env] == digest:
			p.Why = "the current lock of env " + env
		case recent[env+"\x00"+digest]:
			p.Why = fmt.Sprintf("among the last %d locks of env %s", opts.Keep, env)
		default:
			p.Why = fmt.Sprintf("an older lock of env %s (not among its last %d, not current, not in use)", env, opts.Keep)
		}
		keep := inUse[im.ID] != "" || (len(im.Tags) > 0 && im.Labels[labels.Stage] == "" && (opts.Current[env] == digest && digest != "" || recent[env+"\x00"+digest]))
		if keep {
			res.Kept = append(res.Kept, p)
			continue
		}
		if !opts.DryRun {
			if err := removeAll(ctx, eng, im); err != nil {
				p.Why = "kept: the engine refused to remove it: " + err.Error()
				res.Kept = append(res.Kept, p)
				continue
			}
		}
		res.Removed = append(res.Removed, p)
		res.Freed += im.Size
	}
	slices.SortFunc(res.Removed, func(a, b PrunedImage) int { return cmp.Compare(a.Ref, b.Ref) })
	slices.SortFunc(res.Kept, func(a, b PrunedImage) int { return cmp.Compare(a.Ref, b.Ref) })
	return res, nil
}

// removeAll removes each tag of an image, then the image (never forced).
func removeAll(ctx context.Context, eng PruneEngine, im backend.ImageSummary) error {
	for _, t := range im.Tags {
		if err := eng.RemoveImage(ctx, t); err != nil {
			return err
		}
	}
	if len(im.Tags) == 0 {
		return eng.RemoveImage(ctx, im.ID)
	}
	return nil
}

// ErrBuildRunning is Prune's error while a build holds the build lock.
var ErrBuildRunning = errors.New("a build is running on this machine (spawnd build, or one through the daemon's API); prune when it has finished")

// buildLockPath is the lock file builds share and prune takes alone:
// $SPAWND_BUILD_LOCK, else in /run/lock (shared by every service on
// Debian), else the temp dir.
func buildLockPath() string {
	if p := os.Getenv("SPAWND_BUILD_LOCK"); p != "" {
		return p
	}
	if fi, err := os.Stat("/run/lock"); err == nil && fi.IsDir() {
		return "/run/lock/spawnd-images.lock"
	}
	return filepath.Join(os.TempDir(), "spawnd-images.lock")
}

// lockBuilds takes the build lock: shared for a build (waiting for a prune
// to finish), exclusive for a prune (failing at once with ErrBuildRunning
// if a build holds it).
func lockBuilds(exclusive bool) (unlock func(), err error) {
	path := buildLockPath()
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		if f, err = os.Open(path); err != nil {
			return nil, fmt.Errorf("opening the build lock %s: %w", path, err)
		}
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX | syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrBuildRunning
		}
		return nil, fmt.Errorf("taking the build lock %s: %w", path, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}
