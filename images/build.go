package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
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

// Lock resolves a spec with the real tools in containers of its base and
// returns the lock: the base's digest, apt's exact versions and SHA-256s
// (apt-get --print-uris), conda's packages by URL and SHA-256 (py-rattler,
// on the host), and pip's
// exact versions and SHA-256s (pip's installation report).
func Lock(ctx context.Context, eng Engine, s *envs.Spec, opts Options) (*envs.Lock, error) {
	began := time.Now()
	l := &envs.Lock{
		Env: s.Name, Description: s.Description, SpecChecksum: s.Checksum(), Created: opts.now(),
		Kernels: s.Jupyter.Kernels, Cmd: s.Jupyter.Cmd, User: *s.User,
	}
	opts.emit(began, Event{Phase: "lock", Step: "base", Message: "resolving base image " + s.Base})
	base, err := eng.ImageInspect(ctx, s.Base)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("%s: base image %s does not exist on the engine; load it, or make a Debian base offline with scripts/make-base", s.PosOf("base"), s.Base)
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting base image %s: %w", s.Base, err)
	}
	l.Base = envs.Base{Ref: s.Base, Digest: base.ID}
	if l.Base.Packages, err = basePackages(ctx, eng, base.ID, opts); err != nil {
		return nil, err
	}

	if len(s.Apt) > 0 {
		opts.emit(began, Event{Phase: "lock", Step: "apt", Message: fmt.Sprintf("resolving %d apt packages with apt-get", len(s.Apt))})
		script := aptLockScript
		res, err := eng.RunCapture(ctx, backend.RunSpec{Image: base.ID, Cmd: append([]string{"/bin/sh", "-c", script, "apt-lock"}, s.Apt...),
			Network: opts.Network, Labels: map[string]string{labels.Lock: s.Name}})
		if err != nil {
			return nil, fmt.Errorf("locking apt packages: %w", err)
		}
		if res.ExitCode != 0 {
			return nil, toolError(s, "apt", "apt-get", res, s.Apt, "apt")
		}
		if l.Apt, err = parseAptLock(res.Stdout); err != nil {
			return nil, fmt.Errorf("locking apt packages: %w", err)
		}
	}

	if s.Conda != nil {
		if l.Conda, err = lockConda(ctx, s, l.Base.Packages, &opts, began); err != nil {
			return nil, err
		}
	}

	if s.Pip != nil {
		opts.emit(began, Event{Phase: "lock", Step: "pip", Message: "building the apt and conda layers to resolve pip packages in"})
		if err := download(ctx, opts.cache().Missing(Files(l)), opts.cache(), &opts, began); err != nil {
			return nil, err
		}
		if err := ensureCondaTree(ctx, l, opts.cache(), &opts, began); err != nil {
			return nil, err
		}
		stageID, err := buildStage(ctx, eng, l, StageConda, stageTag(s.Name), &opts, began, "lock")
		if err != nil {
			return nil, fmt.Errorf("building the apt layer for pip: %w", err)
		}
		opts.emit(began, Event{Phase: "lock", Step: "pip", Message: fmt.Sprintf("resolving %d pip packages with pip", len(s.Pip.Packages))})
		pip := []string{"python3", "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--break-system-packages",
			"--disable-pip-version-check", "--no-input", "--no-cache-dir", "--retries", "1", "--timeout", "15"}
		if s.Pip.IndexURL != "" {
			pip = append(pip, "--index-url", s.Pip.IndexURL)
		}
		pip = append(pip, s.Pip.Packages...)
		// sh -c 'PRELUDE exec "$@"' sh pip ...: the packages stay arguments, never shell text.
		cmd := append([]string{"/bin/sh", "-euc", PipCAPrelude + `exec "$@"`, "sh"}, pip...)
		res, err := eng.RunCapture(ctx, backend.RunSpec{Image: stageID, Cmd: cmd, Network: opts.Network, Labels: map[string]string{labels.Lock: s.Name},
			Files: pipCAFiles(opts.CACerts)})
		if err != nil {
			return nil, fmt.Errorf("locking pip packages: %w", err)
		}
		if res.ExitCode != 0 {
			return nil, toolError(s, "pip", "pip", res, s.Pip.Packages, "pip.packages")
		}
		pkgs, err := parsePipReport(res.Stdout)
		if err != nil {
			return nil, fmt.Errorf("locking pip packages: %w", err)
		}
		if err := checkYanked(ctx, pkgs, s.Pip.IndexURL, &opts); err != nil {
			return nil, err
		}
		l.Pip = &envs.PipLock{IndexURL: s.Pip.IndexURL, Packages: pkgs}
	}
	l.Seal()
	opts.emit(began, Event{Phase: "lock", Step: "done", Message: fmt.Sprintf("locked %s: %d apt, %d conda, %d pip packages", l.Digest[:19], len(l.Apt), condaCount(l), pipCount(l)), Done: true})
	return l, nil
}

func condaCount(l *envs.Lock) int {
	if l.Conda == nil {
		return 0
	}
	return len(l.Conda.Packages)
}

func pipCount(l *envs.Lock) int {
	if l.Pip == nil {
		return 0
	}
	return len(l.Pip.Packages)
}

var toolPkgRE = regexp.MustCompile(`(?i)(?:unable to locate package|has no installation candidate|requirement|distribution found for|package) ['"]?([A-Za-z0-9][A-Za-z0-9._+-]*)`)

// toolError turns a package tool's failure into an error that quotes the
// tool and names the spec line that asked for the package it complains of.
func toolError(s *envs.Spec, what, tool string, res backend.RunResult, asked []string, field string) error {
	msg := strings.TrimSpace(string(res.Stderr))
	if msg == "" {
		msg = strings.TrimSpace(string(res.Stdout))
	}
	lines := strings.Split(msg, "\n")
	var keep []string
	for _, ln := range lines {
		if strings.Contains(ln, "ERROR") || strings.HasPrefix(ln, "E:") || strings.Contains(ln, "rror") {
			keep = append(keep, strings.TrimSpace(ln))
		}
	}
	if len(keep) == 0 {
		keep = lines
	}
	if len(keep) > 6 {
		keep = keep[len(keep)-6:]
	}
	quoted := strings.Join(keep, "\n  ")
	where := s.PosOf(field)
	for _, m := range toolPkgRE.FindAllStringSubmatch(msg, -1) {
		for i, a := range asked {
			name := a
			if j := strings.IndexAny(a, "<>=!~[; "); j > 0 {
				name = a[:j]
			}
			if strings.EqualFold(normalizePipName(name), normalizePipName(m[1])) {
				f := fmt.Sprintf("%s[%d]", field, i)
				return fmt.Errorf("%s: %s: %s could not resolve %q:\n  %s", s.PosOf(f), f, tool, a, quoted)
			}
		}
	}
	return fmt.Errorf("%s: %s failed (exit %d) resolving the %s packages:\n  %s", where, tool, res.ExitCode, what, quoted)
}

// LockOrLoad returns the lock of a spec: the existing lock when it matches
// the spec, a new one otherwise (written atomically next to the spec). A lock
// whose checksum no longer matches the spec is refused unless relock is set;
// a lock edited by hand is always refused. A running daemon keeps serving the
// previous lock until the new lock's image exists.
func LockOrLoad(ctx context.Context, eng Engine, s *envs.Spec, specPath string, opts Options) (*envs.Lock, bool, error) {
	l, fresh, err := loadOrLock(ctx, eng, s, specPath, opts)
	if err != nil || !fresh {
		return l, fresh, err
	}
	if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// loadOrLock is LockOrLoad without writing: a fresh lock (true) is the
// caller's to write.
func loadOrLock(ctx context.Context, eng Engine, s *envs.Spec, specPath string, opts Options) (*envs.Lock, bool, error) {
	lockPath := envs.LockPath(specPath)
	l, err := envs.ReadLock(lockPath)
	switch {
	case err == nil && !l.Stale(s) && !opts.Relock:
		return l, false, nil
	case err == nil && l.Stale(s) && !opts.Relock:
		return nil, false, fmt.Errorf("%s was made from another version of %s (spec checksum changed); run spawnd lock %s, or build with --relock", lockPath, specPath, specPath)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, false, err
	}
	nl, err := Lock(ctx, eng, s, opts)
	if err != nil {
		return nil, false, err
	}
	return nl, true, nil
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
	if img, err := eng.ImageInspect(ctx, res.Tag); err == nil && img.Labels[labels.LockDigest] == l.Digest {
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

var stepRE = regexp.MustCompile(`^Step (\d+/\d+) : (.*)`)

// buildLines turns the engine's build output into progress events: one per
// Dockerfile step, with "Using cache" marking cached layers.
func buildLines(opts *Options, began time.Time, phase string) func(backend.BuildLine) {
	step := ""
	return func(bl backend.BuildLine) {
		line := strings.TrimSpace(bl.Stream)
		if m := stepRE.FindStringSubmatch(line); m != nil {
			step = "layer " + m[1]
			msg := m[2]
			if len(msg) > 100 {
				msg = msg[:100] + "…"
			}
			opts.emit(began, Event{Phase: phase, Step: step, Message: msg})
			return
		}
		if line == "---> Using cache" {
			opts.emit(began, Event{Phase: phase, Step: step, Message: "cached", Cached: true})
			return
		}
		if bl.Bytes > 0 {
			opts.emit(began, Event{Phase: phase, Step: step, Message: "transferring", Bytes: bl.Bytes})
		}
	}
}

// lineTail keeps the last non-empty lines of a build's output.
type lineTail struct {
	max   int
	lines []string
}

func newLineTail(n int) *lineTail { return &lineTail{max: n} }

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

func (t *lineTail) add(s string) {
	for _, l := range strings.Split(ansiRE.ReplaceAllString(s, ""), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "---> ") && !strings.HasPrefix(l, " ---> ") {
			t.lines = append(t.lines, l)
		}
	}
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *lineTail) String() string {
	if len(t.lines) == 0 {
		return ""
	}
	return "; the build's last lines:\n  " + strings.Join(t.lines, "\n  ")
}

// basePackages lists what an image holds, by dpkg: "name=version" lines.
func basePackages(ctx context.Context, eng Engine, image string, opts Options) ([]string, error) {
	res, err := eng.RunCapture(ctx, backend.RunSpec{Image: image, Network: noNetwork, Labels: map[string]string{labels.Lock: "base"},
		Cmd: []string{"dpkg-query", "-W", "-f", "${Package}=${Version}\\n"}})
	if err != nil {
		return nil, fmt.Errorf("listing the packages of the base image: %w", err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("listing the packages of the base image %s with dpkg-query failed (exit %d): %s; the base must be a Debian image", image, res.ExitCode, quoteTool(res))
	}
	var pkgs []string
	for _, ln := range strings.Split(string(res.Stdout), "\n") {
		if ln = strings.TrimSpace(ln); ln != "" {
			pkgs = append(pkgs, ln)
		}
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// BaseMismatchError is a lock whose base this engine does not have: what
// the engine has under the base's name, and how its packages differ.
type BaseMismatchError struct {
	Ref, Want, Have string
	// Differences are "name: lock VERSION, here VERSION" lines (a version is
	// "none" when the package is absent).
	Differences []string
}

func (e *BaseMismatchError) Error() string {
	var b strings.Builder
	if e.Have == "" {
		fmt.Fprintf(&b, "the lock's base image %s (%s) is not on this engine", e.Ref, e.Want)
	} else {
		fmt.Fprintf(&b, "the lock's base image is %s %s, but %s here is %s", e.Ref, e.Want, e.Ref, e.Have)
	}
	if len(e.Differences) > 0 {
		shown := e.Differences
		if len(shown) > 10 {
			shown = shown[:10]
		}
		fmt.Fprintf(&b, "; they differ in %d packages:\n  %s", len(e.Differences), strings.Join(shown, "\n  "))
		if len(e.Differences) > len(shown) {
			fmt.Fprintf(&b, "\n  (and %d more)", len(e.Differences)-len(shown))
		}
		b.WriteString("\n")
	} else {
		b.WriteString("; ")
	}
	b.WriteString("the Debian mirror has moved since the lock was made, or the base was made elsewhere. Rebuild exactly this lock from a bundle of it (spawnd build --from-bundle DIR), or make a new lock against this base (spawnd build --relock)")
	return b.String()
}

// baseMismatch explains a lock whose base is not on the engine.
func baseMismatch(ctx context.Context, eng Engine, l *envs.Lock, opts *Options) error {
	e := &BaseMismatchError{Ref: l.Base.Ref, Want: l.Base.Digest}
	have, err := eng.ImageInspect(ctx, l.Base.Ref)
	if err != nil {
		return e
	}
	e.Have = have.ID
	pkgs, err := basePackages(ctx, eng, have.ID, *opts)
	if err != nil || len(l.Base.Packages) == 0 {
		return e
	}
	e.Differences = packageDifferences(l.Base.Packages, pkgs)
	return e
}

// packageDifferences compares two "name=version" lists.
func packageDifferences(lock, here []string) []string {
	parse := func(list []string) map[string]string {
		m := map[string]string{}
		for _, p := range list {
			n, v, _ := strings.Cut(p, "=")
			m[n] = v
		}
		return m
	}
	a, b := parse(lock), parse(here)
	names := map[string]bool{}
	for n := range a {
		names[n] = true
	}
	for n := range b {
		names[n] = true
	}
	var out []string
	for n := range names {
		va, vb := a[n], b[n]
		if va == vb {
			continue
		}
		if va == "" {
			va = "none"
		}
		if vb == "" {
			vb = "none"
		}
		out = append(out, fmt.Sprintf("%s: lock %s, here %s", n, va, vb))
	}
	sort.Strings(out)
	return out
}

// Event is one step of a lock or build, as it happens. The daemon's API
// sends it as api.BuildEvent (the same fields); the builder does not speak
// the wire.
type Event struct {
	Time      time.Time
	Phase     string // "lock", "fetch", "build"
	Step      string
	Message   string
	ElapsedMS int64
	Bytes     int64
	Cached    bool
	// Done is set on the last event; Tag, ImageID and Built report the
	// result, Error a failure.
	Done    bool
	Tag     string
	ImageID string
	Built   bool
	Error   string
}
