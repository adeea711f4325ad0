package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Lock resolves a spec with the real tools in containers of its base and
// returns the lock: the base's digest, apt's exact versions and SHA-256s
// (apt-get --print-uris), conda's packages by URL and SHA-256 (py-rattler,
// on the host), and pip's
// exact versions and SHA-256s (pip's installation report).
func Lock(ctx context.Context, eng Engine, s *envs.Spec, opts Options) (*envs.Lock, error) {
	began := time.Now()
	l := &envs.Lock{
		Env: s.Name, Description: s.Description, SpecChecksum: s.Checksum(), Created: opts.now(),
		Kernels: s.Jupyter.Kernels, Settings: s.Jupyter.Settings, Cmd: s.Jupyter.Cmd, User: *s.User,
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
	if err := settingsHaveALab(s, l); err != nil {
		return nil, err
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

// settingsHaveALab refuses jupyter.settings in an env that installs no
// JupyterLab: nothing would read them.
func settingsHaveALab(s *envs.Spec, l *envs.Lock) error {
	if len(l.Settings) == 0 {
		return nil
	}
	if _, ok := labPrefix(l); ok {
		return nil
	}
	return &envs.Error{Pos: s.PosOf("jupyter.settings"), Field: "jupyter.settings",
		Msg: "the env installs no JupyterLab to apply these settings to; add jupyterlab to pip.packages (or conda.packages), or remove jupyter.settings"}
}

// settingsError is the spec's error for a build that failed on a plugin of
// jupyter.settings the image's JupyterLab lacks (the plan's check prints
// unknownPluginMark and the ID), at the plugin's line; nil for any other
// failure.
func settingsError(specPath string, lines []string) error {
	for _, line := range lines {
		// The check's own line, not the build's echo of the step (which
		// holds the same words inside the script).
		id, ok := strings.CutPrefix(line, unknownPluginMark)
		if !ok {
			continue
		}
		id = strings.TrimSpace(id)
		field := envs.SettingsField(id)
		pos := envs.Pos{File: specPath}
		if s, err := envs.Load(specPath); err == nil {
			pos = s.PosOf(field)
		}
		return &envs.Error{Pos: pos, Field: field, Msg: fmt.Sprintf("the image's JupyterLab has no plugin %q (no settings schema for it, core or extension); check the ID (JupyterLab's Settings Editor shows each plugin's) or add the extension that provides it; no image was built", id)}
	}
	return nil
}
