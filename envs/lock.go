package envs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// LockVersion is the version of the lock file format.
const LockVersion = 1

// Lock pins everything a spec asks for: the base image by digest, each apt,
// conda and pip package by exact version and hash. Building from a lock
// installs exactly these; the lock's digest names the image.
type Lock struct {
	LockVersion int `json:"lock_version"`
	// Env is the spec's name.
	Env string `json:"env"`
	// Description is copied from the spec.
	Description string `json:"description,omitempty"`
	// SpecChecksum is the checksum of the spec this lock was made from.
	SpecChecksum string `json:"spec_checksum"`
	// Created is when the lock was made (UTC, seconds); builds take their
	// timestamps from it unless SOURCE_DATE_EPOCH is set.
	Created time.Time    `json:"created"`
	Base    Base         `json:"base"`
	Apt     []AptPackage `json:"apt,omitempty"`
	Conda   *CondaLock   `json:"conda,omitempty"`
	Pip     *PipLock     `json:"pip,omitempty"`
	Kernels []Kernel     `json:"kernels,omitempty"`
	// Settings are the spec's JupyterLab settings overrides, by plugin ID.
	Settings map[string]map[string]any `json:"settings,omitempty"`
	Cmd      []string                  `json:"cmd"`
	User     User                      `json:"user"`
	// Digest is the SHA-256 of this lock's canonical JSON with Digest empty.
	// A lock whose content no longer matches its digest was edited by hand.
	Digest string `json:"digest"`
}

// Base is the pinned base image.
type Base struct {
	// Ref is the reference the spec gave.
	Ref string `json:"ref"`
	// Digest is the image's content digest (its id, sha256 of its config).
	Digest string `json:"digest"`
	// Packages is what the base holds, as "name=version" lines from dpkg,
	// sorted: what a machine must make to make the same base, and what a
	// lock that does not fit a machine's base names as the difference.
	Packages []string `json:"packages,omitempty"`
}

// AptPackage is one Debian package, dependencies included.
type AptPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
	SHA256  string `json:"sha256"`
	Size    int64  `json:"size,omitempty"`
	// URL is where the mirror served the file when the lock was made.
	URL string `json:"url,omitempty"`
}

// CondaLock is the conda part of a lock: an explicit environment, solved
// with py-rattler for the image's platform.
type CondaLock struct {
	Channels []string `json:"channels"`
	// Platform is the conda subdir solved for ("linux-64").
	Platform string         `json:"platform,omitempty"`
	Packages []CondaPackage `json:"packages"`
}

// CondaPackage is one conda package by URL and hash.
type CondaPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Build   string `json:"build,omitempty"`
	URL     string `json:"url"`
	// Channel is the channel the solver found it in.
	Channel string `json:"channel,omitempty"`
	// File is the package file's name (name-version-build.conda).
	File   string `json:"file,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	MD5    string `json:"md5,omitempty"`
	Size   int64  `json:"size,omitempty"`
}

// PipLock is the pip part of a lock.
type PipLock struct {
	IndexURL string       `json:"index_url,omitempty"`
	Packages []PipPackage `json:"packages"`
}

// PipPackage is one Python distribution, dependencies included.
type PipPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	// File is the file name of the wheel pip chose.
	File string `json:"file,omitempty"`
	// URL is where the index served the file when the lock was made.
	URL string `json:"url,omitempty"`
}

// LockPath is where the lock of a spec lives: envs/team.yaml -> envs/team.lock.json.
func LockPath(specPath string) string {
	ext := filepath.Ext(specPath)
	return strings.TrimSuffix(specPath, ext) + ".lock.json"
}

// Seal sorts the lock's lists and sets its digest.
func (l *Lock) Seal() {
	l.LockVersion = LockVersion
	l.Created = l.Created.UTC().Truncate(time.Second)
	sort.Strings(l.Base.Packages)
	sort.Slice(l.Apt, func(i, j int) bool { return l.Apt[i].Name < l.Apt[j].Name })
	if l.Pip != nil {
		sort.Slice(l.Pip.Packages, func(i, j int) bool { return l.Pip.Packages[i].Name < l.Pip.Packages[j].Name })
	}
	if l.Conda != nil {
		sort.Slice(l.Conda.Packages, func(i, j int) bool { return l.Conda.Packages[i].Name < l.Conda.Packages[j].Name })
	}
	l.Digest = l.computeDigest()
}

func (l *Lock) computeDigest() string {
	c := *l
	c.Digest = ""
	b, _ := json.Marshal(&c)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Tag is the image tag that follows from the lock: spawnd/<env>:<12 hex of the digest>.
func (l *Lock) Tag() string {
	return "spawnd/" + l.Env + ":" + l.ShortDigest()
}

// ShortDigest is the first 12 hex digits of the digest.
func (l *Lock) ShortDigest() string {
	d := strings.TrimPrefix(l.Digest, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

// Marshal is the lock file's bytes: indented JSON with a trailing newline.
func (l *Lock) Marshal() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(l)
	return buf.Bytes()
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ErrLockTampered says a lock's content does not match its digest.
var ErrLockTampered = errors.New("the lock does not match its digest (was it edited by hand?); regenerate it with spawnd lock")

// ParseLock decodes a lock strictly and verifies its digest.
func ParseLock(file string, data []byte) (*Lock, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var l Lock
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("%s: invalid lock: %w", file, err)
	}
	if l.LockVersion != LockVersion {
		return nil, fmt.Errorf("%s: lock_version %d is not supported (want %d); regenerate it with spawnd lock", file, l.LockVersion, LockVersion)
	}
	if l.Env == "" || l.Base.Digest == "" || l.SpecChecksum == "" {
		return nil, fmt.Errorf("%s: the lock lacks env, base digest or spec checksum; regenerate it with spawnd lock", file)
	}
	if l.Digest != l.computeDigest() {
		return nil, fmt.Errorf("%s: %w", file, ErrLockTampered)
	}
	if l.Conda != nil {
		for i, c := range l.Conda.Packages {
			if c.Name == "" || c.URL == "" || !sha256RE.MatchString(c.SHA256) {
				return nil, fmt.Errorf("%s: conda.packages[%d] (%s): a conda package needs a name, a URL and a SHA-256; regenerate the lock with spawnd lock", file, i, c.Name)
			}
		}
	}
	return &l, nil
}

// ReadLock reads a lock file; a missing file is os.ErrNotExist.
func ReadLock(path string) (*Lock, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseLock(path, b)
}

// WriteLock writes the lock atomically (a temporary file renamed into place),
// so a failure never leaves half a lock.
func WriteLock(path string, l *Lock) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".lock-*.json")
	if err != nil {
		return fmt.Errorf("writing lock: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(l.Marshal()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing lock: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing lock: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}

// Stale reports whether the lock was made from another version of the spec.
func (l *Lock) Stale(s *Spec) bool { return l.SpecChecksum != s.Checksum() }
