package testenv

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// SlotsDir returns a slots_dir for a daemon of the test (home_owner system
// or range, pools), whose leftover mounts (a server the test left running
// still holds its slot) are detached when the test ends, then the shared
// mount pools make of the directory itself, before it is removed.
func SlotsDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if err := syscall.Unmount(filepath.Join(dir, e.Name()), syscall.MNT_DETACH); err == nil {
				t.Logf("detached a home slot the test left mounted: %s", e.Name())
			}
		}
		_ = syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	return dir
}
