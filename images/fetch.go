package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// A build never reaches a network: every file a lock names (each .deb and
// each wheel) is fetched first, checked against the lock's SHA-256 and kept
// in a package cache on the host, and the build copies it from there with
// the build containers' network set to none. The same lock therefore builds
// from the same bytes whether they came from the mirror, from the cache or
// from a bundle (spawnd bundle), and gives the same image.

// File is one package file a lock names.
type File struct {
	Kind    string // "apt", "conda" or "pip"
	Name    string // package name
	Version string
	File    string // the file's name: apt's archive name or the wheel's
	SHA256  string
	Size    int64  // 0 when the lock does not say
	URL     string // where the lock was made from; "" in locks before round 3
}

func (f File) String() string {
	return fmt.Sprintf("%s package %s %s (%s)", f.Kind, f.Name, f.Version, f.File)
}

// Files lists the package files of a lock: apt's, conda's, then pip's.
func Files(l *envs.Lock) []File {
	var fs []File
	for _, a := range l.Apt {
		fs = append(fs, File{Kind: "apt", Name: a.Name, Version: a.Version, File: AptFile(a), SHA256: a.SHA256, Size: a.Size, URL: a.URL})
	}
	if l.Conda != nil {
		for _, c := range l.Conda.Packages {
			fs = append(fs, File{Kind: "conda", Name: c.Name, Version: c.Version, File: condaFile(c), SHA256: c.SHA256, Size: c.Size, URL: c.URL})
		}
	}
	if l.Pip != nil {
		for _, p := range l.Pip.Packages {
			fs = append(fs, File{Kind: "pip", Name: p.Name, Version: p.Version, File: p.File, SHA256: p.SHA256, URL: p.URL})
		}
	}
	return fs
}

func filesOf(l *envs.Lock, kind string) []File {
	var out []File
	for _, f := range Files(l) {
		if f.Kind == kind {
			out = append(out, f)
		}
	}
	return out
}

// Cache is a directory of package files named by their SHA-256. A file is
// written under a temporary name and renamed into place only when its hash
// is the one asked for, so a file in the cache is always whole and right.
type Cache struct{ Dir string }

// DefaultCacheDir is $SPAWND_CACHE_DIR, or spawnd/packages in the user's
// cache directory (/root/.cache/spawnd/packages for root).
func DefaultCacheDir() string {
	if d := os.Getenv("SPAWND_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "spawnd", "packages")
	}
	return filepath.Join(os.TempDir(), "spawnd-packages")
}

// Path is where the file of a SHA-256 lives.
func (c Cache) Path(sum string) string { return filepath.Join(c.Dir, "sha256", sum) }

// Has reports whether the cache holds a file.
func (c Cache) Has(sum string) bool {
	fi, err := os.Stat(c.Path(sum))
	return err == nil && fi.Mode().IsRegular()
}

// Missing lists the files the cache does not hold.
func (c Cache) Missing(fs []File) []File {
	var out []File
	for _, f := range fs {
		if !c.Has(f.SHA256) {
			out = append(out, f)
		}
	}
	return out
}

// HashMismatchError is a file whose bytes are not the ones its lock names.
type HashMismatchError struct {
	File      File
	Got, From string
}

func (e *HashMismatchError) Error() string {
	fix := "the file changed since the lock was made (relock to accept the new file, or build from a bundle of the lock)"
	if strings.HasPrefix(e.From, "bundle ") {
		fix = "the bundle was altered or damaged; write it again with spawnd bundle"
	}
	return fmt.Sprintf("%s from %s has sha256 %s, but the lock says %s; %s", e.File, e.From, e.Got, e.File.SHA256, fix)
}

// Put stores the bytes of f read from r, checking them against f's SHA-256.
// from names where they came from, for the error.
func (c Cache) Put(f File, r io.Reader, from string) error {
	dir := filepath.Join(c.Dir, "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".incoming-*")
	if err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), r); err != nil {
		tmp.Close()
		return fmt.Errorf("reading %s from %s: %w", f, from, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return &HashMismatchError{File: f, Got: got, From: from}
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.Path(f.SHA256)); err != nil {
		return fmt.Errorf("package cache: %w", err)
	}
	return nil
}

// putFromTar stores the files of a tar stream that fs names (by file name),
// and returns those still missing.
func (c Cache) putFromTar(r io.Reader, fs []File, from string) ([]File, error) {
	byName := map[string]File{}
	for _, f := range fs {
		byName[f.File] = f
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the files fetched from %s: %w", from, err)
		}
		f, ok := byName[path.Base(h.Name)]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		if err := c.Put(f, tr, from); err != nil {
			return nil, err
		}
	}
	return c.Missing(fs), nil
}

// aptFetchScript downloads exact apt versions ("name=version" arguments)
// into /out with apt's own download and signature checks.
const aptFetchScript = `set -eu
mkdir -p /out; chown _apt /out 2>/dev/null || true; cd /out
apt-get update -qq
apt-get download -qq "$@"
`

// fetch makes sure the cache holds every file of the lock of the given
// kind, fetching the missing ones in a throw-away container of image, on
// opts.Network. It is where a build meets a network; nothing else is.
func fetch(ctx context.Context, eng Engine, l *envs.Lock, kind, image string, cache Cache, opts *Options, began time.Time) error {
	missing := cache.Missing(filesOf(l, kind))
	if len(missing) == 0 {
		return nil
	}
	if opts.Offline {
		return fmt.Errorf("%d %s package files are not in the package cache %s and this build may not fetch (first: %s)", len(missing), kind, cache.Dir, missing[0])
	}
	var cmd []string
	switch kind {
	case "apt":
		opts.emit(began, Event{Phase: "fetch", Step: "apt", Message: fmt.Sprintf("downloading %d apt packages", len(missing))})
		cmd = []string{"/bin/sh", "-c", aptFetchScript, "apt-fetch"}
		for _, f := range missing {
			cmd = append(cmd, f.Name+"="+f.Version)
		}
	case "pip":
		opts.emit(began, Event{Phase: "fetch", Step: "pip", Message: fmt.Sprintf("downloading %d pip packages", len(missing))})
		pip := []string{pythonOf(l), "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary", ":all:", "--dest", "/out",
			"--disable-pip-version-check", "--no-input", "--no-cache-dir", "--retries", "1", "--timeout", "30", "-r", "/tmp/spawnd-req.txt"}
		if l.Pip.IndexURL != "" {
			pip = append(pip, "--index-url", l.Pip.IndexURL)
		}
		// The requirement lines are arguments, written to a file by printf,
		// never shell text.
		script := `mkdir -p /out; n=$1; shift; i=0; : > /tmp/spawnd-req.txt; ` +
			`while [ $i -lt $n ]; do printf '%s\n' "$1" >> /tmp/spawnd-req.txt; shift; i=$((i+1)); done; ` + PipCAPrelude + `exec "$@"`
		cmd = []string{"/bin/sh", "-euc", script, "pip-fetch", fmt.Sprint(len(missing))}
		for _, f := range missing {
			cmd = append(cmd, fmt.Sprintf("%s==%s --hash=sha256:%s", f.Name, f.Version, f.SHA256))
		}
		cmd = append(cmd, pip...)
	default:
		return fmt.Errorf("fetch: unknown kind %q", kind)
	}
	from := map[string]string{"apt": "the Debian mirror", "pip": "the package index"}[kind]
	var still []File
	res, err := eng.RunCapture(ctx, backend.RunSpec{Image: image, Cmd: cmd, Network: opts.Network, Labels: map[string]string{labels.Lock: l.Env},
		Files: pipCAFiles(opts.CACerts), Collect: "/out",
		Collected: func(r io.Reader) (err error) { still, err = cache.putFromTar(r, missing, from); return err }})
	if err != nil {
		return fmt.Errorf("fetching %s packages: %w", kind, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("fetching %d %s packages of the lock failed (exit %d):\n  %s", len(missing), kind, res.ExitCode, quoteTool(res))
	}
	if len(still) > 0 {
		return fmt.Errorf("fetching %s packages: %s was not among the downloaded files", kind, still[0])
	}
	opts.emit(began, Event{Phase: "fetch", Step: kind, Message: fmt.Sprintf("%d %s packages fetched and checked", len(missing), kind)})
	return nil
}

// quoteTool is what a package tool said of its failure: from its first
// error line (pip's "ERROR:", apt's "E:"), or its last lines.
func quoteTool(res backend.RunResult) string {
	msg := strings.TrimSpace(string(res.Stderr) + "\n" + string(res.Stdout))
	lines := strings.Split(msg, "\n")
	for i, ln := range lines {
		if strings.HasPrefix(ln, "ERROR") || strings.HasPrefix(ln, "E:") {
			lines = lines[i:]
			break
		}
	}
	var keep []string
	for _, ln := range lines {
		if strings.TrimSpace(ln) != "" {
			keep = append(keep, ln)
		}
	}
	if len(keep) > 12 {
		keep = keep[:12]
	}
	return strings.Join(keep, "\n  ")
}

// pythonOf is the Python that pip installs into: conda's when the lock's
// conda packages include Python, Debian's otherwise.
func pythonOf(l *envs.Lock) string {
	if l.Conda != nil {
		for _, c := range l.Conda.Packages {
			if c.Name == "python" {
				return CondaPrefix + "/bin/python"
			}
		}
	}
	return "python3"
}

// fetchWorkers is how many files are downloaded at once.
const fetchWorkers = 6

// download fetches files from the URLs their lock recorded, on the host, a
// few at a time, each checked against the lock's SHA-256 as it enters the
// cache. The host's proxy settings (HTTPS_PROXY, NO_PROXY) and trusted CAs
// apply, plus opts.CACerts.
func download(ctx context.Context, fs []File, c Cache, opts *Options, began time.Time) error {
	if len(fs) == 0 {
		return nil
	}
	hc, err := opts.httpClient()
	if err != nil {
		return err
	}
	var total int64
	for _, f := range fs {
		total += f.Size
	}
	opts.emit(began, Event{Phase: "fetch", Step: "download", Message: fmt.Sprintf("downloading %d package files", len(fs))})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan File)
	errs := make(chan error, len(fs))
	var wg sync.WaitGroup
	var done, got atomic.Int64
	for range min(fetchWorkers, len(fs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range jobs {
				n, err := get(ctx, hc, f, c)
				if err != nil {
					errs <- err
					cancel()
					continue
				}
				k := done.Add(1)
				b := got.Add(n)
				if k%10 == 0 || int(k) == len(fs) {
					opts.emit(began, Event{Phase: "fetch", Step: "download", Message: fmt.Sprintf("%d/%d package files", k, len(fs)), Bytes: b})
				}
			}
		}()
	}
feed:
	for _, f := range fs {
		select {
		case jobs <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	var first error
	for err := range errs {
		if first == nil || (errors.Is(first, context.Canceled) && !errors.Is(err, context.Canceled)) {
			first = err
		}
	}
	return first
}

// get downloads one file into the cache and returns its size.
func get(ctx context.Context, hc *http.Client, f File, c Cache) (int64, error) {
	u, err := url.Parse(f.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return 0, fmt.Errorf("%s: the lock's URL %q is not an http(s) URL", f, f.URL)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s: %w; is %s reachable from this host? (a bundle of the lock builds with no network: --from-bundle)", f, err, u.Host)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: GET %s: %s; the mirror or index no longer serves it: build from a bundle of the lock (--from-bundle), or relock (--relock)", f, f.URL, resp.Status)
	}
	cr := &countingReader{r: resp.Body}
	if err := c.Put(f, cr, u.Host); err != nil {
		return 0, err
	}
	return cr.n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// httpClient is the host's HTTP client for fetching: its proxy settings,
// its trusted CAs and the extra ones of the options.
func (o *Options) httpClient() (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if len(o.CACerts) > 0 && !pool.AppendCertsFromPEM(o.CACerts) {
		return nil, errors.New("the extra CA certificates hold no PEM certificate")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}
