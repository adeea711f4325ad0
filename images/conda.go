package images

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"crypto/sha256"

	"github.com/spawnd/spawnd/envs"
)

// Conda packages are solved and installed on the host with py-rattler, run
// by a Python that has it (scripts/rattler-venv makes one). The solve is for
// the image's platform and C library, not the host's. The install reads only
// package files the cache holds (each checked against the lock's SHA-256),
// writes /opt/conda into the files that name their prefix, runs no link
// script, and leaves a tree in the cache that the build copies to
// /opt/conda: the build itself needs no conda tool and no network.

//go:embed conda_helper.py
var condaHelper []byte

// CondaPythonEnv names the Python with py-rattler that spawnd runs for
// conda; DefaultCondaPython when unset.
const CondaPythonEnv = "SPAWND_CONDA_PYTHON"

// DefaultCondaPython is where scripts/rattler-venv puts py-rattler's Python.
const DefaultCondaPython = "/var/lib/spawnd/rattler/bin/python"

// CondaPrefix is where an image's conda packages live.
const CondaPrefix = "/opt/conda"

func (o *Options) condaPython() string {
	if o.CondaPython != "" {
		return o.CondaPython
	}
	if p := os.Getenv(CondaPythonEnv); p != "" {
		return p
	}
	return DefaultCondaPython
}

// helperError is what the conda helper reported.
type helperError struct{ msg string }

func (e *helperError) Error() string { return e.msg }

// runCondaHelper sends one request to the helper and decodes its answer.
func runCondaHelper(ctx context.Context, opts *Options, req, ans any) error {
	py := opts.condaPython()
	if _, err := exec.LookPath(py); err != nil {
		return fmt.Errorf("conda packages need a Python with py-rattler, and %s is not one (%v): run scripts/rattler-venv, or set %s to such a Python", py, errors.Unwrap(err), CondaPythonEnv)
	}
	in, err := json.Marshal(req)
	if err != nil {
		return err
	}
	// -I: neither PYTHON* variables nor the user's site-packages change
	// what the helper runs.
	cmd := exec.CommandContext(ctx, py, "-I", "-c", string(condaHelper))
	cmd.Stdin = bytes.NewReader(in)
	if len(opts.CACerts) > 0 {
		// py-rattler trusts the system's certificates and, through
		// SSL_CERT_FILE, a bundle of them plus the extra ones.
		bundle, err := caBundle(opts.CACerts)
		if err != nil {
			return err
		}
		defer os.Remove(bundle)
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+bundle)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	var out struct {
		Error string `json:"error"`
	}
	line := bytes.TrimSpace(stdout.Bytes())
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if len(line) > 0 && json.Unmarshal(line, &out) == nil && out.Error != "" {
		return &helperError{msg: out.Error}
	}
	if runErr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("conda helper (%s): %w", py, ctx.Err())
		}
		return fmt.Errorf("conda helper (%s) failed: %v: %s", py, runErr, lastLines(stderr.String(), 4))
	}
	if err := json.Unmarshal(line, ans); err != nil {
		return fmt.Errorf("conda helper (%s) answered %q: %w", py, lastLines(stdout.String(), 2), err)
	}
	return nil
}

// systemCABundles are where Linux distributions keep the system's trusted
// certificates, in one PEM file.
var systemCABundles = []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"}

// caBundle writes a temporary PEM file of the system's certificates (or
// $SSL_CERT_FILE's) and extra: SSL_CERT_FILE replaces the system's list.
func caBundle(extra []byte) (string, error) {
	var pem []byte
	files := systemCABundles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		files = []string{f}
	}
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			pem = append(b, '\n')
			break
		}
	}
	pem = append(pem, extra...)
	f, err := os.CreateTemp("", "spawnd-ca-*.pem")
	if err != nil {
		return "", fmt.Errorf("writing the CA bundle for py-rattler: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(pem); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing the CA bundle for py-rattler: %w", err)
	}
	return f.Name(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n  ")
}

// condaSubdir is conda's name for the platform of images made here.
func condaSubdir() (string, error) {
	switch runtime.GOARCH {
	case "amd64":
		return "linux-64", nil
	case "arm64":
		return "linux-aarch64", nil
	case "ppc64le":
		return "linux-ppc64le", nil
	case "s390x":
		return "linux-s390x", nil
	}
	return "", fmt.Errorf("conda has no linux platform for %s", runtime.GOARCH)
}

var leadingVersionRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*`)

// condaVirtual are the virtual packages the solve assumes: those of the
// image (its C library, from the base's package list) and of the kernel it
// runs on (this machine's).
func condaVirtual(basePkgs []string) []map[string]string {
	v := []map[string]string{{"name": "__unix", "version": "0", "build": "0"}}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		if k := leadingVersionRE.FindString(string(b)); k != "" {
			v = append(v, map[string]string{"name": "__linux", "version": k, "build": "0"})
		}
	}
	for _, p := range basePkgs {
		if rest, ok := strings.CutPrefix(p, "libc6="); ok {
			if g := leadingVersionRE.FindString(rest); g != "" {
				v = append(v, map[string]string{"name": "__glibc", "version": g, "build": "0"})
			}
		}
	}
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}[runtime.GOARCH]
	if arch != "" {
		v = append(v, map[string]string{"name": "__archspec", "version": "1", "build": arch})
	}
	return v
}

var noCandidatesRE = regexp.MustCompile(`No candidates were found for ([A-Za-z0-9_.-]+)`)

// lockConda solves a spec's conda section with py-rattler: every package,
// dependencies included, by URL and SHA-256.
func lockConda(ctx context.Context, s *envs.Spec, basePkgs []string, opts *Options, began time.Time) (*envs.CondaLock, error) {
	subdir, err := condaSubdir()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.PosOf("conda"), err)
	}
	opts.emit(began, Event{Phase: "lock", Step: "conda", Message: fmt.Sprintf("solving %d conda packages with py-rattler (%s, channels %s)", len(s.Conda.Packages), subdir, strings.Join(s.Conda.Channels, ", "))})
	req := map[string]any{
		"op": "solve", "channels": s.Conda.Channels, "specs": s.Conda.Packages, "platform": subdir,
		"virtual": condaVirtual(basePkgs), "cache_dir": filepath.Join(opts.cache().Dir, "conda-repodata"),
	}
	var ans struct {
		Packages []struct {
			Name, Version, Build, URL, Channel, Subdir, File, SHA256, MD5 string
			Size                                                          int64
		} `json:"packages"`
	}
	if err := runCondaHelper(ctx, opts, req, &ans); err != nil {
		return nil, condaSolveError(s, err)
	}
	l := &envs.CondaLock{Channels: s.Conda.Channels, Platform: subdir}
	for _, p := range ans.Packages {
		if p.SHA256 == "" {
			return nil, fmt.Errorf("%s: conda: channel %s lists %s %s without a SHA-256; spawnd locks only packages it can check", s.PosOf("conda.channels"), p.Channel, p.Name, p.Version)
		}
		l.Packages = append(l.Packages, envs.CondaPackage{Name: p.Name, Version: p.Version, Build: p.Build, URL: p.URL, Channel: p.Channel,
			File: p.File, SHA256: p.SHA256, MD5: p.MD5, Size: p.Size})
	}
	return l, nil
}

// condaSolveError names the spec line a solver failure is about: the
// package the channels lack, or the channels when one cannot be reached.
func condaSolveError(s *envs.Spec, err error) error {
	var he *helperError
	if !errors.As(err, &he) {
		return fmt.Errorf("%s: conda: %w", s.PosOf("conda"), err)
	}
	msg := he.msg
	if m := noCandidatesRE.FindStringSubmatch(msg); m != nil {
		for i, p := range s.Conda.Packages {
			if condaName(p) == strings.ToLower(m[1]) {
				f := fmt.Sprintf("conda.packages[%d]", i)
				return fmt.Errorf("%s: %s: no package %q in the channels %s for this platform:\n  %s", s.PosOf(f), f, p, strings.Join(s.Conda.Channels, ", "), msg)
			}
		}
	}
	if strings.Contains(msg, "certificate") || strings.Contains(msg, "UnknownIssuer") {
		return fmt.Errorf("%s: conda.channels: a channel of %s has a certificate this machine does not trust; behind a TLS-intercepting proxy, give its CA to the build (--ca-cert, or SPAWND_BUILD_CA_CERTS):\n  %s", s.PosOf("conda.channels"), strings.Join(s.Conda.Channels, ", "), msg)
	}
	if strings.Contains(msg, "GatewayError") || strings.Contains(msg, "connect") || strings.Contains(msg, "status code") {
		return fmt.Errorf("%s: conda.channels: a channel of %s could not be read (is it up, and is its URL right?):\n  %s", s.PosOf("conda.channels"), strings.Join(s.Conda.Channels, ", "), msg)
	}
	return fmt.Errorf("%s: conda.packages: py-rattler could not solve %s:\n  %s", s.PosOf("conda.packages"), strings.Join(s.Conda.Packages, ", "), msg)
}

// condaName is the package name of a match spec ("numpy>=1.26" → numpy).
func condaName(spec string) string {
	if i := strings.IndexAny(spec, "=<>!~ ["); i > 0 {
		spec = spec[:i]
	}
	return strings.ToLower(spec)
}

func hasConda(l *envs.Lock) bool { return l.Conda != nil && len(l.Conda.Packages) > 0 }

// condaFile is the package file name of a locked conda package.
func condaFile(c envs.CondaPackage) string {
	if c.File != "" {
		return c.File
	}
	return path.Base(c.URL)
}

// CondaTreeKey names the installed conda tree of a lock in the package
// cache: a hash of the packages (by SHA-256), the prefix and the helper that
// installs them. Two locks with the same conda packages share a tree.
func CondaTreeKey(l *envs.Lock) string {
	h := sha256.New()
	fmt.Fprintf(h, "spawnd conda tree 1\n%s\n", CondaPrefix)
	h.Write(condaHelper)
	for _, c := range l.Conda.Packages {
		fmt.Fprintf(h, "%s %s %s\n", c.SHA256, condaFile(c), c.URL)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TreePath is where the cache keeps an installed tree.
func (c Cache) TreePath(key string) string { return filepath.Join(c.Dir, "trees", key) }

// ensureCondaTree installs a lock's conda packages from the cache into a
// tree of the cache, unless it is there: staged under a temporary name and
// renamed into place when whole.
func ensureCondaTree(ctx context.Context, l *envs.Lock, c Cache, opts *Options, began time.Time) error {
	if !hasConda(l) {
		return nil
	}
	final := c.TreePath(CondaTreeKey(l))
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return nil
	}
	if missing := c.Missing(filesOf(l, "conda")); len(missing) > 0 {
		return fmt.Errorf("installing conda packages: %s is not in the package cache %s", missing[0], c.Dir)
	}
	opts.emit(began, Event{Phase: "fetch", Step: "conda", Message: fmt.Sprintf("installing %d conda packages into %s with py-rattler (no network)", len(l.Conda.Packages), CondaPrefix)})
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	stage, err := os.MkdirTemp(filepath.Dir(final), ".staging-*")
	if err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	defer os.RemoveAll(stage)
	// The cache names files by hash; rattler reads a package's format from
	// its file name, so it gets links named as the channel named them (in
	// the cache's file system, so a link is always possible).
	links := filepath.Join(stage, "files")
	if err := os.Mkdir(links, 0o755); err != nil {
		return err
	}
	var pkgs []map[string]string
	for _, p := range l.Conda.Packages {
		name := condaFile(p)
		if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
			return fmt.Errorf("conda package %s: bad file name %q in the lock", p.Name, name)
		}
		// Hard links: rattler resolves a symlink and would see the hash name.
		link := filepath.Join(links, name)
		if err := os.Link(c.Path(p.SHA256), link); err != nil {
			return fmt.Errorf("staging conda package %s: %w", p.Name, err)
		}
		pkgs = append(pkgs, map[string]string{"path": link, "url": p.URL, "channel": p.Channel, "file": name})
	}
	prefix := filepath.Join(stage, "prefix")
	req := map[string]any{"op": "install", "prefix": prefix, "target": CondaPrefix, "packages": pkgs,
		"cache_dir": filepath.Join(stage, "extracted")}
	var ans struct {
		Installed int `json:"installed"`
	}
	if err := runCondaHelper(ctx, opts, req, &ans); err != nil {
		return fmt.Errorf("installing the lock's conda packages with py-rattler: %w", err)
	}
	if ans.Installed != len(l.Conda.Packages) {
		return fmt.Errorf("installing conda packages: py-rattler installed %d of %d", ans.Installed, len(l.Conda.Packages))
	}
	if err := os.Rename(prefix, final); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	opts.emit(began, Event{Phase: "fetch", Step: "conda", Message: fmt.Sprintf("%d conda packages installed (tree %s)", ans.Installed, filepath.Base(final)[:12])})
	return nil
}
