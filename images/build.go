package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Engine is what locking needs from a container engine (the Docker
// backend, spawnd/docker, implements it).
type Engine = backend.Builder

// Builder is what building an image needs: an Engine, and the engine's
// image store, through which every build is normalized (same lock, same
// digest). It is a required part, not an optional one found by a type
// assertion: a backend without a store cannot build, rather than build
// images that differ from the same lock's elsewhere.
type Builder interface {
	Engine
	Store
}

// Options configure locking and building.
type Options struct {
	// Network for the containers that lock and fetch packages ("host"
	// reaches an index on 127.0.0.1). Builds always run with no network.
	Network string
	// CacheDir is the package cache (DefaultCacheDir when empty).
	CacheDir string
	// Offline forbids fetching: every package file must already be in the
	// cache (spawnd build --from-bundle fills it first).
	Offline bool
	// Progress receives events; nil discards them.
	Progress func(Event)
	// Relock makes a new lock even when the lock is current.
	Relock bool
	// NoCache rebuilds every layer, ignoring the engine's build cache.
	NoCache bool
	// CACerts are extra PEM certificates that pip trusts, beside the image's
	// own, while locking and fetching (a company's or a network's TLS-
	// intercepting proxy). They reach the lock and fetch containers only,
	// never a build, an image's files or its history.
	CACerts []byte
	// CondaPython is a Python with py-rattler, which solves and installs
	// conda packages ($SPAWND_CONDA_PYTHON, else DefaultCondaPython).
	CondaPython string
	// Registry are options for reaching a registry (a bundle pushed there).
	Registry []remote.Option
	// Now is the clock (for tests); nil is time.Now.
	Now func() time.Time

	rollback bool // a Rollback's build: the history is not written
}

func (o *Options) emit(began time.Time, ev Event) {
	if o.Progress == nil {
		return
	}
	ev.Time = time.Now()
	ev.ElapsedMS = time.Since(began).Milliseconds()
	o.Progress(ev)
}

// PackageCache is the package cache the options name.
func (o *Options) PackageCache() Cache { return o.cache() }

func (o *Options) cache() Cache {
	if o.CacheDir != "" {
		return Cache{Dir: o.CacheDir}
	}
	return Cache{Dir: DefaultCacheDir()}
}

// noNetwork is the network of every build: packages come from the cache.
const noNetwork = "none"

// buildStage builds the plan of a lock cut after a stage, offline, from the
// package cache, and tags it.
func buildStage(ctx context.Context, eng Engine, l *envs.Lock, upTo Stage, tag string, opts *Options, began time.Time, phase string) (string, error) {
	ctxTar, err := NewBuildPlan(l, upTo).Tar(opts.cache())
	if err != nil {
		return "", err
	}
	return eng.Build(ctx, backend.BuildSpec{Context: ctxTar, Tags: []string{tag}, Network: noNetwork, NoCache: opts.NoCache}, buildLines(opts, began, phase))
}

// stageTag is the tag of an env's apt (and conda) layers, which pip locks
// and fetches in.
func stageTag(env string) string { return "spawnd-lock/" + env + ":stage" }

// prepare makes sure the package cache holds every file of the lock. Files
// whose lock recorded a URL are downloaded on the host, a few at a time;
// those of older locks are fetched with the package tools in containers:
// apt's in a container of the base, pip's in a container of the lock's apt
// layers (built offline from the cache).
func prepare(ctx context.Context, eng Engine, l *envs.Lock, opts *Options, began time.Time) error {
	c := opts.cache()
	missing := c.Missing(Files(l))
	if len(missing) == 0 {
		return ensureCondaTree(ctx, l, c, opts, began)
	}
	if opts.Offline {
		return fmt.Errorf("%d package files are not in the package cache %s and this build may not fetch (first: %s)", len(missing), c.Dir, missing[0])
	}
	var byURL []File
	for _, f := range missing {
		if f.URL != "" {
			byURL = append(byURL, f)
		}
	}
	if err := download(ctx, byURL, c, opts, began); err != nil {
		return err
	}
	if err := fetch(ctx, eng, l, "apt", l.Base.Digest, c, opts, began); err != nil {
		return err
	}
	if len(c.Missing(filesOf(l, "conda"))) > 0 {
		return fmt.Errorf("conda packages: %s was not downloaded", c.Missing(filesOf(l, "conda"))[0])
	}
	if err := ensureCondaTree(ctx, l, c, opts, began); err != nil {
		return err
	}
	if len(c.Missing(filesOf(l, "pip"))) == 0 {
		return nil
	}
	stage, err := buildStage(ctx, eng, l, StageConda, stageTag(l.Env), opts, began, "fetch")
	if err != nil {
		return fmt.Errorf("building the apt layer to fetch pip packages in: %w", err)
	}
	return fetch(ctx, eng, l, "pip", stage, c, opts, began)
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Now().UTC()
}

// Result is what a build did.
type Result struct {
	Tag     string
	ImageID string
	Lock    *envs.Lock
	// Built is false when the image of the lock already existed: no engine
	// build ran.
	Built bool
	// Locked is true when a new lock was written.
	Locked bool
}

// Build makes the image of a spec: it locks first when there is no lock,
// refuses a stale lock unless opts.Relock, and builds from the lock through
// the engine. An image that already carries the lock's digest is returned
// without any build. A failed build leaves the previous image and lock as
// they were.
func Build(ctx context.Context, eng Builder, specPath string, opts Options) (Result, error) {
	unlock, err := lockBuilds(false) // no prune while this builds
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	began := time.Now()
	s, err := envs.Load(specPath)
	if err != nil {
		return Result{}, err
	}
	// A new lock (first build, or relock) is made in memory and written only
	// once its image exists: a daemon watching the file never sees a lock
	// it cannot start, and a failed build leaves the previous lock as it was.
	l, locked, err := loadOrLock(ctx, eng, s, specPath, opts)
	if err != nil {
		return Result{}, err
	}
	return build(ctx, eng, specPath, l, locked, opts, began)
}

// BuildFromBundle builds the lock a bundle holds, with no network at all:
// the packages and, when the engine lacks it, the base image come from the
// bundle (spawnd bundle). The spec's lock, when there is one, must be the
// bundle's; when there is none, the bundle's lock is written next to the
// spec once its image exists.
func BuildFromBundle(ctx context.Context, eng BundleEngine, specPath, src string, opts Options) (Result, error) {
	unlock, err := lockBuilds(false) // no prune while this builds
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	began := time.Now()
	s, err := envs.Load(specPath)
	if err != nil {
		return Result{}, err
	}
	b, err := OpenBundle(src, append(opts.Registry, remote.WithContext(ctx))...)
	if err != nil {
		return Result{}, err
	}
	lockPath := envs.LockPath(specPath)
	l, err := envs.ReadLock(lockPath)
	locked := false
	switch {
	case errors.Is(err, os.ErrNotExist):
		l, locked = b.Lock, true
	case err != nil:
		return Result{}, err
	case l.Digest != b.Lock.Digest:
		return Result{}, fmt.Errorf("bundle %s holds the lock %s of env %s, but %s is %s; a bundle rebuilds exactly its own lock", src, b.Lock.Digest, b.Lock.Env, lockPath, l.Digest)
	}
	if l.Env != s.Name || l.Stale(s) {
		return Result{}, fmt.Errorf("bundle %s holds a lock of env %s made from another version of %s (spec checksum %s, the spec's is %s)", src, l.Env, specPath, l.SpecChecksum, s.Checksum())
	}
	if err := b.Import(ctx, eng, opts.cache(), opts.Progress); err != nil {
		return Result{}, err
	}
	opts.Offline, opts.Relock = true, false
	return build(ctx, eng, specPath, l, locked, opts, began)
}

// build makes the image of a lock; a fresh lock (locked) is written next to
// the spec once the image exists.
func build(ctx context.Context, eng Builder, specPath string, l *envs.Lock, locked bool, opts Options, began time.Time) (Result, error) {
	res := Result{Tag: l.Tag(), Lock: l, Locked: locked}
	img, err := eng.ImageInspect(ctx, res.Tag)
	if err == nil && img.Labels[labels.LockDigest] == l.Digest && img.Labels[labels.Plan] != PlanVersion {
		// Same lock, but an older spawnd built it: what this spawnd puts
		// in every image (PlanVersion) is not in it. Built again, same tag.
		opts.emit(began, Event{Phase: "build", Step: "start", Message: fmt.Sprintf("image %s was built by an older spawnd (plan %q, now %q); building it again", res.Tag, img.Labels[labels.Plan], PlanVersion)})
	} else if err == nil && img.Labels[labels.LockDigest] == l.Digest {
		res.ImageID = img.ID
		if locked {
			if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
				return Result{}, err
			}
		}
		if err := remember(specPath, l, opts); err != nil {
			return Result{}, err
		}
		opts.emit(began, Event{Phase: "build", Step: "done", Message: "image " + res.Tag + " is up to date; nothing to build", Done: true, Cached: true})
		return res, nil
	} else if err != nil && !errdefs.IsNotFound(err) {
		return Result{}, fmt.Errorf("inspecting %s: %w", res.Tag, err)
	}
	baseInfo, err := eng.ImageInspect(ctx, l.Base.Digest)
	if errdefs.IsNotFound(err) {
		return Result{}, baseMismatch(ctx, eng, l, &opts)
	} else if err != nil {
		return Result{}, fmt.Errorf("inspecting the base image %s: %w", l.Base.Digest, err)
	}
	if err := prepare(ctx, eng, l, &opts, began); err != nil {
		return Result{}, err
	}
	plan, err := NewBuildPlan(l, StageAll).Tar(opts.cache())
	if err != nil {
		return Result{}, err
	}
	opts.emit(began, Event{Phase: "build", Step: "start", Message: "building " + res.Tag + " (no network: every package comes from the cache)"})
	lines, tail := buildLines(&opts, began, "build"), newLineTail(12)
	id, err := eng.Build(ctx, backend.BuildSpec{Context: plan, Tags: []string{res.Tag}, Network: noNetwork, NoCache: opts.NoCache},
		func(bl backend.BuildLine) { tail.add(bl.Stream); lines(bl) })
	if err != nil {
		if serr := settingsError(specPath, tail.lines); serr != nil {
			return Result{}, serr
		}
		// The engine's error names only the failed step; the reason (a
		// hash mismatch, apt's missing dependency) is in the lines before it.
		return Result{}, fmt.Errorf("building %s: %w%s", res.Tag, err, tail.String())
	}
	// Same lock, same image: normalize what the build left (Normalize).
	opts.emit(began, Event{Phase: "build", Step: "normalize", Message: "normalizing the image (same lock, same digest)"})
	if id, err = Normalize(ctx, eng, res.Tag, l.Created, baseInfo.Layers); err != nil {
		return Result{}, err
	}
	if locked {
		if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
			return Result{}, err
		}
	}
	if err := remember(specPath, l, opts); err != nil {
		return Result{}, err
	}
	res.ImageID, res.Built = id, true
	opts.emit(began, Event{Phase: "build", Step: "done", Message: "built " + res.Tag, Done: true})
	return res, nil
}

// remember keeps a built lock in the env's history (envs.Remember), with
// the spec it was made from, unless the build is a rollback's (whose lock
// is already there, and whose spec on disk is not that lock's yet).
func remember(specPath string, l *envs.Lock, opts Options) error {
	if opts.rollback {
		return nil
	}
	return envs.Remember(specPath, l)
}
