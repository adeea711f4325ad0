package idmap

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// asUID runs sh -c script as uid:gid (no supplementary groups) and returns
// its combined output and error.
func asUID(uid, gid int, script string) (string, error) {
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func owner(t *testing.T, path string) (int, int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

// TestMountShowsThePersonsHomeAsTheImageUser makes a real idmapped mount on
// this machine's file system: a home owned by 200001 appears as 1000:100
// through it, what 1000 writes lands as 200001 on disk, a file of anyone
// else is nobody's, and the home itself is unreadable to 1000 without the
// mount (the positive control is the read through it).
func TestMountShowsThePersonsHomeAsTheImageUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("idmapped mounts need root (CAP_SYS_ADMIN); run the tests as root")
	}
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} { // t.TempDir's are 0700
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home, slot := filepath.Join(base, "home"), filepath.Join(base, "slot")
	for _, d := range []string{home, slot} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(home, "notes.txt"), []byte("alice's notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "stranger.txt"), []byte("not alice's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{home, filepath.Join(home, "notes.txt")} {
		if err := os.Chown(p, 200001, 200001); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(home, "stranger.txt"), 300000, 300000); err != nil {
		t.Fatal(err)
	}
	if out, err := asUID(1000, 100, "cat "+filepath.Join(home, "notes.txt")); err == nil {
		t.Fatalf("uid 1000 read a home owned by 200001 without the mount: %s", out)
	}

	dir, err := os.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	m := Mapping{HostUID: 200001, HostGID: 200001, InUID: 1000, InGID: 100}
	if err := Mount(dir, slot, m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Unmount(slot) })
	if ok, err := Mounted(slot); err != nil || !ok {
		t.Fatalf("Mounted(slot) = %v, %v after Mount", ok, err)
	}

	if u, g := owner(t, slot); u != 1000 || g != 100 {
		t.Fatalf("through the mount the home is owned by %d:%d, want 1000:100", u, g)
	}
	if u, _ := owner(t, filepath.Join(slot, "stranger.txt")); u != 65534 {
		t.Fatalf("a file of uid 300000 appears as %d through the mount, want the overflow id 65534", u)
	}
	out, err := asUID(1000, 100, "cat "+filepath.Join(slot, "notes.txt")+" && echo written > "+filepath.Join(slot, "new.txt")+" && mkdir "+filepath.Join(slot, "work"))
	if err != nil || out != "alice's notes" {
		t.Fatalf("uid 1000 through the mount: %q, %v", out, err)
	}
	for _, p := range []string{"new.txt", "work"} {
		if u, g := owner(t, filepath.Join(home, p)); u != 200001 || g != 200001 {
			t.Fatalf("%s written through the mount is %d:%d on disk, want 200001:200001", p, u, g)
		}
	}
	if out, err := asUID(1000, 100, "chown 1000 "+filepath.Join(slot, "stranger.txt")); err == nil {
		t.Fatalf("uid 1000 took a stranger's file through the mount: %s", out)
	}

	if err := Unmount(slot); err != nil {
		t.Fatal(err)
	}
	if ok, err := Mounted(slot); err != nil || ok {
		t.Fatalf("Mounted(slot) = %v, %v after Unmount", ok, err)
	}
	if err := Unmount(slot); err != nil {
		t.Fatalf("a second Unmount: %v", err)
	}
}
