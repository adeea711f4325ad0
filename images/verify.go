package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// VerifyEngine is what Verify needs: building, moving images, and removing
// the scratch image it makes.
type VerifyEngine interface {
	Engine
	Store
	RemoveImage(ctx context.Context, ref string) error
}

// VerifyResult is what a verification found.
type VerifyResult struct {
	Tag     string // the image of the lock
	ImageID string
	// RebuiltID is the image the rebuild made; Identical when it is ImageID.
	RebuiltID string
	Identical bool
	// Differences names what differs (Differences), when not identical.
	Differences []string
}

// Verify rebuilds the image of a spec's lock from scratch (no build cache)
// under a temporary tag, normalizes it as a build does, and compares it with
// the lock's image: the same lock must give the same image. The temporary
// image is removed; the lock and its image are never changed. It does not
// lock: a missing or stale lock is an error that says to build first.
//
// The rebuild runs in the engine in: a scratch engine (an empty image store
// and build cache of its own, docker.StartScratch) checks the build against
// another engine's; in == eng checks it on the same one. The base image is
// copied into in when in lacks it; package files come from the cache (or
// are fetched through eng).
func Verify(ctx context.Context, eng, in VerifyEngine, specPath string, opts Options) (VerifyResult, error) {
	began := time.Now()
	l, err := CurrentLock(specPath)
	if err != nil {
		return VerifyResult{}, err
	}
	res := VerifyResult{Tag: l.Tag()}
	have, err := eng.Image(ctx, res.Tag)
	if err != nil {
		return res, fmt.Errorf("the image of the lock, %s: %w; build it first (spawnd build %s)", res.Tag, err, specPath)
	}
	hid, err := have.ConfigName()
	if err != nil {
		return res, err
	}
	res.ImageID = hid.String()
	if _, err := in.ImageInspect(ctx, l.Base.Digest); errdefs.IsNotFound(err) {
		opts.emit(began, Event{Phase: "verify", Step: "base", Message: "copying the base image " + l.Base.Ref + " into the engine that rebuilds"})
		info, err := eng.ImageInspect(ctx, l.Base.Ref)
		if err != nil || info.ID != l.Base.Digest {
			return res, baseMismatch(ctx, eng, l, &opts)
		}
		img, err := eng.Image(ctx, l.Base.Ref)
		if err != nil {
			return res, err
		}
		if err := in.WriteImage(ctx, l.Base.Ref, img); err != nil {
			return res, err
		}
	}
	base, err := in.ImageInspect(ctx, l.Base.Digest)
	if err != nil {
		return res, fmt.Errorf("the lock's base image %s (%s): %w", l.Base.Ref, l.Base.Digest, err)
	}
	scratch := "spawnd-verify/" + l.Env + ":" + l.ShortDigest()
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = in.RemoveImage(rctx, scratch)
	}()
	opts.emit(began, Event{Phase: "verify", Step: "start", Message: "rebuilding " + res.Tag + " without the build cache as " + scratch})
	lines, tail := buildLines(&opts, began, "verify"), newLineTail(12)
	if err := prepare(ctx, eng, l, &opts, began); err != nil {
		return res, err
	}
	plan, err := NewBuildPlan(l, StageAll).Tar(opts.cache())
	if err != nil {
		return res, err
	}
	if _, err := in.Build(ctx, backend.BuildSpec{Context: plan, Tags: []string{scratch}, Network: noNetwork, NoCache: true},
		func(bl backend.BuildLine) { tail.add(bl.Stream); lines(bl) }); err != nil {
		return res, fmt.Errorf("rebuilding %s: %w%s", res.Tag, err, tail.String())
	}
	opts.emit(began, Event{Phase: "verify", Step: "normalize", Message: "normalizing the rebuilt image"})
	if res.RebuiltID, err = Normalize(ctx, in, scratch, l.Created, base.Layers); err != nil {
		return res, err
	}
	if res.RebuiltID == res.ImageID {
		res.Identical = true
		opts.emit(began, Event{Phase: "verify", Step: "done", Message: "identical: " + res.ImageID, Done: true})
		return res, nil
	}
	got, err := in.Image(ctx, scratch)
	if err != nil {
		return res, err
	}
	if res.Differences, err = Differences(have, got); err != nil {
		return res, fmt.Errorf("comparing the images: %w", err)
	}
	opts.emit(began, Event{Phase: "verify", Step: "done", Message: fmt.Sprintf("different: %d differences", len(res.Differences)), Done: true})
	return res, nil
}

// CurrentLock is the lock of a spec that exists and was made from the spec
// as it is: a missing or stale lock is an error that says to build first.
func CurrentLock(specPath string) (*envs.Lock, error) {
	s, err := envs.Load(specPath)
	if err != nil {
		return nil, err
	}
	l, err := envs.ReadLock(envs.LockPath(specPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s has no lock; build it first (spawnd build %s)", specPath, specPath)
	}
	if err != nil {
		return nil, err
	}
	if l.Stale(s) {
		return nil, fmt.Errorf("%s was made from another version of %s; build it first (spawnd build %s --relock)", envs.LockPath(specPath), specPath, specPath)
	}
	return l, nil
}
