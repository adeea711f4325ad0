package envs

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// HistoryDir is where the locks an env was built from are kept, each with
// the spec it was made from: envs/team.yaml -> envs/team.history/.
func HistoryDir(specPath string) string {
	ext := filepath.Ext(specPath)
	return strings.TrimSuffix(specPath, ext) + ".history"
}

// HistoryEntry is one remembered lock and the spec it was made from.
type HistoryEntry struct {
	Lock *Lock
	Spec []byte // the spec file as it was when the lock was built
}

// Remember keeps l, and the spec at specPath it was made from, in the
// env's history (HistoryDir: <hex>.lock.json and <hex>.spec.yaml). An entry
// already there is left as it is. Files are written atomically.
func Remember(specPath string, l *Lock) error {
	dir := HistoryDir(specPath)
	hex := strings.TrimPrefix(l.Digest, "sha256:")
	lockFile := filepath.Join(dir, hex+".lock.json")
	if _, err := os.Stat(lockFile); err == nil {
		return nil
	}
	spec, err := os.ReadFile(specPath)
	if err != nil {
		return fmt.Errorf("remembering lock %s: %w", l.ShortDigest(), err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("remembering lock %s: %w", l.ShortDigest(), err)
	}
	if err := writeAtomic(filepath.Join(dir, hex+".spec"+filepath.Ext(specPath)), spec); err != nil {
		return fmt.Errorf("remembering lock %s: %w", l.ShortDigest(), err)
	}
	// The lock last: an entry is whole when its lock file is there.
	if err := WriteLock(lockFile, l); err != nil {
		return fmt.Errorf("remembering lock %s: %w", l.ShortDigest(), err)
	}
	return nil
}

// History lists the env's remembered locks, newest first (by the lock's
// creation time). No history is an empty list.
func History(specPath string) ([]HistoryEntry, error) {
	dir := HistoryDir(specPath)
	files, err := filepath.Glob(filepath.Join(dir, "*.lock.json"))
	if err != nil {
		return nil, err
	}
	var out []HistoryEntry
	for _, f := range files {
		l, err := ReadLock(f)
		if err != nil {
			return nil, fmt.Errorf("reading the env's history: %w", err)
		}
		spec, err := os.ReadFile(strings.TrimSuffix(f, ".lock.json") + ".spec" + filepath.Ext(specPath))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("reading the env's history: %w", err)
		}
		out = append(out, HistoryEntry{Lock: l, Spec: spec})
	}
	slices.SortFunc(out, func(a, b HistoryEntry) int {
		if c := b.Lock.Created.Compare(a.Lock.Created); c != 0 {
			return c
		}
		return cmp.Compare(a.Lock.Digest, b.Lock.Digest)
	})
	return out, nil
}

// FindInHistory finds a remembered lock by digest or a unique prefix of
// its hex ("sha256:" optional). The error says what exists.
func FindInHistory(h []HistoryEntry, digest string) (HistoryEntry, error) {
	want := strings.TrimPrefix(digest, "sha256:")
	var found []HistoryEntry
	for _, e := range h {
		if want != "" && strings.HasPrefix(strings.TrimPrefix(e.Lock.Digest, "sha256:"), want) {
			found = append(found, e)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		var have []string
		for _, e := range h {
			have = append(have, e.Lock.ShortDigest())
		}
		if len(have) == 0 {
			return HistoryEntry{}, fmt.Errorf("lock %s was never built for this env, and its history is empty (it starts with the next build)", digest)
		}
		return HistoryEntry{}, fmt.Errorf("lock %s was never built for this env; its history has %s", digest, strings.Join(have, ", "))
	}
	return HistoryEntry{}, fmt.Errorf("%q matches %d locks of the env's history; give more of the digest", digest, len(found))
}

// writeAtomic writes a file by renaming a temporary one into place.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// WriteSpec replaces the spec file atomically (a rollback puts back the
// spec a remembered lock was made from).
func WriteSpec(path string, data []byte) error { return writeAtomic(path, data) }
