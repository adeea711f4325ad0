package images

import (
	"context"
	"fmt"
	"time"

	"github.com/spawnd/spawnd/envs"
)

// Rollback makes a remembered lock of the env current again: to is its
// digest (or a unique prefix); "" is the newest remembered lock created
// before the current one. Its image is built from the lock if the engine
// no longer has it (packages from the cache, or fetched as the lock pins
// them); then the lock and the spec it was made from are put back, the lock
// first. A running daemon switches to it within a second; servers of the
// lock rolled back from show as outdated until they restart.
func Rollback(ctx context.Context, eng Builder, specPath, to string, opts Options) (Result, error) {
	unlock, err := lockBuilds(false) // no prune while this builds
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	began := time.Now()
	hist, err := envs.History(specPath)
	if err != nil {
		return Result{}, err
	}
	cur, err := envs.ReadLock(envs.LockPath(specPath))
	if err != nil {
		return Result{}, fmt.Errorf("reading the current lock of %s: %w", specPath, err)
	}
	var target envs.HistoryEntry
	if to != "" {
		if target, err = envs.FindInHistory(hist, to); err != nil {
			return Result{}, fmt.Errorf("%s: %w (spawnd envs history %s)", specPath, err, specPath)
		}
	} else {
		for _, e := range hist {
			if e.Lock.Digest != cur.Digest && e.Lock.Created.Before(cur.Created) {
				target = e
				break
			}
		}
		if target.Lock == nil {
			return Result{}, fmt.Errorf("%s: no lock older than the current one (%s) is remembered; spawnd envs history %s lists what is", specPath, cur.ShortDigest(), specPath)
		}
	}
	if target.Lock.Digest == cur.Digest {
		return Result{}, fmt.Errorf("%s: lock %s is already the current one", specPath, cur.ShortDigest())
	}
	if target.Lock.Env != cur.Env {
		return Result{}, fmt.Errorf("%s: the remembered lock %s is of env %q, not %q", specPath, target.Lock.ShortDigest(), target.Lock.Env, cur.Env)
	}
	if len(target.Spec) == 0 {
		return Result{}, fmt.Errorf("%s: the history has lock %s but not the spec it was made from; put it back by hand", specPath, target.Lock.ShortDigest())
	}
	opts.rollback = true
	opts.emit(began, Event{Phase: "rollback", Step: "target", Message: fmt.Sprintf("rolling %s back from lock %s to %s (made %s)",
		cur.Env, cur.ShortDigest(), target.Lock.ShortDigest(), target.Lock.Created.UTC().Format(time.RFC3339))})
	res, err := build(ctx, eng, specPath, target.Lock, false, opts, began)
	if err != nil {
		return Result{}, fmt.Errorf("rebuilding the image of lock %s: %w", target.Lock.ShortDigest(), err)
	}
	if err := envs.WriteLock(envs.LockPath(specPath), target.Lock); err != nil {
		return Result{}, err
	}
	if err := envs.WriteSpec(specPath, target.Spec); err != nil {
		return Result{}, fmt.Errorf("the lock is rolled back to %s, but the spec could not be: %w; put back %s from %s by hand",
			target.Lock.ShortDigest(), err, specPath, envs.HistoryDir(specPath))
	}
	return res, nil
}
