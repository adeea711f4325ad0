package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Engine is what locking and building need from a container engine (the
// Docker backend, spawnd/docker, implements it).
type Engine = backend.Builder

// Options configure locking and building.
type Options struct {
	// Network for lock containers and builds ("host" reaches an index on 127.0.0.1).
	Network string
	// Progress receives events; nil discards them.
	Progress func(api.BuildEvent)
	// Relock makes a new lock even when the lock is current.
	Relock bool
	// NoCache rebuilds every layer, ignoring the engine's build cache.
	NoCache bool
	// CACerts are extra PEM certificates that pip trusts, beside the image's
	// own, while locking and building (a company's or a network's TLS-
	// intercepting proxy). They are given to the build as an argument and
	// never written to the image's files; the image's build history records
	// them (certificates are public).
	CACerts []byte
	// Now is the clock (for tests); nil is time.Now.
	Now func() time.Time
}

func (o *Options) emit(began time.Time, ev api.BuildEvent) {
	if o.Progress == nil {
		return
	}
	ev.Time = time.Now()
	ev.ElapsedMS = time.Since(began).Milliseconds()
	o.Progress(ev)
}

// buildArgs are the plan's ARG values: the extra CA certificates, when given.
func (o *Options) buildArgs() map[string]string {
	if len(o.CACerts) == 0 {
		return nil
	}
	return map[string]string{PipCAArg: string(o.CACerts)}
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
// (apt-get --print-uris), conda's explicit packages (micromamba), and pip's
// exact versions and SHA-256s (pip's installation report).
func Lock(ctx context.Context, eng Engine, s *envs.Spec, opts Options) (*envs.Lock, error) {
	began := time.Now()
	l := &envs.Lock{
		Env: s.Name, Description: s.Description, SpecChecksum: s.Checksum(), Created: opts.now(),
		Kernels: s.Jupyter.Kernels, Cmd: s.Jupyter.Cmd, User: *s.User,
	}
	opts.emit(began, api.BuildEvent{Phase: "lock", Step: "base", Message: "resolving base image " + s.Base})
	base, err := eng.ImageInspect(ctx, s.Base)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("%s: base image %s does not exist on the engine; load it, or make a Debian base offline with scripts/make-base", s.PosOf("base"), s.Base)
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting base image %s: %w", s.Base, err)
	}
	l.Base = envs.Base{Ref: s.Base, Digest: base.ID}

	if len(s.Apt) > 0 {
		opts.emit(began, api.BuildEvent{Phase: "lock", Step: "apt", Message: fmt.Sprintf("resolving %d apt packages with apt-get", len(s.Apt))})
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
		return nil, fmt.Errorf("%s: conda: locking needs micromamba in the base image and a reachable channel; see docs/ENVS.md (conda support is planned and tested only as far as the lock format)", s.PosOf("conda"))
	}

	if s.Pip != nil {
		opts.emit(began, api.BuildEvent{Phase: "lock", Step: "pip", Message: "building the apt layer to resolve pip packages in"})
		stage := NewBuildPlan(l, StageConda)
		stageTag := "spawnd-lock/" + s.Name + ":stage"
		stageID, err := eng.Build(ctx, backend.BuildSpec{Context: stage.Tar(), Tags: []string{stageTag}, Network: opts.Network, BuildArgs: opts.buildArgs()},
			buildLines(&opts, began, "lock"))
		if err != nil {
			return nil, fmt.Errorf("building the apt layer for pip: %w", err)
		}
		opts.emit(began, api.BuildEvent{Phase: "lock", Step: "pip", Message: fmt.Sprintf("resolving %d pip packages with pip", len(s.Pip.Packages))})
		pip := []string{"python3", "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--break-system-packages",
			"--disable-pip-version-check", "--no-input", "--no-cache-dir", "--retries", "1", "--timeout", "15"}
		if s.Pip.IndexURL != "" {
			pip = append(pip, "--index-url", s.Pip.IndexURL)
		}
		pip = append(pip, s.Pip.Packages...)
		// sh -c 'PRELUDE exec "$@"' sh pip ...: the packages stay arguments, never shell text.
		cmd := append([]string{"/bin/sh", "-euc", PipCAPrelude + `exec "$@"`, "sh"}, pip...)
		res, err := eng.RunCapture(ctx, backend.RunSpec{Image: stageID, Cmd: cmd, Network: opts.Network, Labels: map[string]string{labels.Lock: s.Name},
			Env: []string{PipCAArg + "=" + string(opts.CACerts)}})
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
		l.Pip = &envs.PipLock{IndexURL: s.Pip.IndexURL, Packages: pkgs}
	}
	l.Seal()
	opts.emit(began, api.BuildEvent{Phase: "lock", Step: "done", Message: fmt.Sprintf("locked %s: %d apt, %d pip packages", l.Digest[:19], len(l.Apt), pipCount(l)), Done: true})
	return l, nil
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
func Build(ctx context.Context, eng Engine, specPath string, opts Options) (Result, error) {
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
	res := Result{Tag: l.Tag(), Lock: l, Locked: locked}
	if img, err := eng.ImageInspect(ctx, res.Tag); err == nil && img.Labels[labels.LockDigest] == l.Digest {
		res.ImageID = img.ID
		if locked {
			if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
				return Result{}, err
			}
		}
		opts.emit(began, api.BuildEvent{Phase: "build", Step: "done", Message: "image " + res.Tag + " is up to date; nothing to build", Done: true, Cached: true})
		return res, nil
	} else if err != nil && !errdefs.IsNotFound(err) {
		return Result{}, fmt.Errorf("inspecting %s: %w", res.Tag, err)
	}
	baseInfo, err := eng.ImageInspect(ctx, l.Base.Digest)
	if errdefs.IsNotFound(err) {
		return Result{}, fmt.Errorf("the lock's base image %s (%s) is not on the engine; load it, or relock against the base you have (spawnd build --relock)", l.Base.Ref, l.Base.Digest)
	} else if err != nil {
		return Result{}, fmt.Errorf("inspecting the base image %s: %w", l.Base.Digest, err)
	}
	plan := NewBuildPlan(l, StageAll)
	opts.emit(began, api.BuildEvent{Phase: "build", Step: "start", Message: "building " + res.Tag})
	lines, tail := buildLines(&opts, began, "build"), newLineTail(12)
	id, err := eng.Build(ctx, backend.BuildSpec{Context: plan.Tar(), Tags: []string{res.Tag}, Network: opts.Network, NoCache: opts.NoCache, BuildArgs: opts.buildArgs()},
		func(bl backend.BuildLine) { tail.add(bl.Stream); lines(bl) })
	if err != nil {
		// The engine's error names only the failed step; the reason (pip's
		// hash mismatch, apt's missing package) is in the lines before it.
		return Result{}, fmt.Errorf("building %s: %w%s", res.Tag, err, tail.String())
	}
	if st, ok := eng.(Store); ok {
		// Same lock, same image: normalize what the build left (Normalize).
		opts.emit(began, api.BuildEvent{Phase: "build", Step: "normalize", Message: "normalizing the image (same lock, same digest)"})
		if id, err = Normalize(ctx, st, res.Tag, l.Created, baseInfo.Layers); err != nil {
			return Result{}, err
		}
	}
	if locked {
		if err := envs.WriteLock(envs.LockPath(specPath), l); err != nil {
			return Result{}, err
		}
	}
	res.ImageID, res.Built = id, true
	opts.emit(began, api.BuildEvent{Phase: "build", Step: "done", Message: "built " + res.Tag, Done: true})
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
			opts.emit(began, api.BuildEvent{Phase: phase, Step: step, Message: msg})
			return
		}
		if line == "---> Using cache" {
			opts.emit(began, api.BuildEvent{Phase: phase, Step: step, Message: "cached", Cached: true})
			return
		}
		if bl.Bytes > 0 {
			opts.emit(began, api.BuildEvent{Phase: phase, Step: step, Message: "transferring", Bytes: bl.Bytes})
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
