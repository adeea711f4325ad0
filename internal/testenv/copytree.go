package testenv

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CopyRepo copies the work tree (the files git tracks, and new ones it does
// not ignore, as they are now) into a temporary directory and returns it, so
// that a test of a script that may write into the tree (scripts/compose-up
// builds and locks envs/) can never change the tree under test.
func CopyRepo(t testing.TB) string {
	t.Helper()
	root := RepoRoot(t)
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("listing the work tree (git ls-files): %v", err)
	}
	dst := filepath.Join(t.TempDir(), "tree")
	for _, rel := range bytes.Split(bytes.TrimRight(out, "\x00"), []byte{0}) {
		name := string(rel)
		if err := copyFile(filepath.Join(root, name), filepath.Join(dst, name)); err != nil {
			t.Fatalf("copying %s: %v", name, err)
		}
	}
	return dst
}

// copyFile copies one regular file (its mode too) or symlink; a file git
// lists but the tree no longer has (deleted, not yet committed) is skipped.
func copyFile(src, dst string) error {
	fi, err := os.Lstat(src)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
