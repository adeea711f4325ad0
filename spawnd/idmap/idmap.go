// Package idmap gives a server a person's home through an idmapped mount:
// the home keeps its owner on the host (the person's own uid) while the
// server, which runs as the env image's user, sees it as its own. Docker
// 20.10 cannot make such mounts, so spawnd makes them itself, on a slot
// directory that the container then bind-mounts (docs/DESIGN-NOTES.md, "One
// uid per person").
//
// A mount is made with the new mount API (Linux 5.12 and later):
// open_tree(OPEN_TREE_CLONE) of the home, mount_setattr(MOUNT_ATTR_IDMAP)
// with a user namespace whose only mapping is person ↔ image user, then
// move_mount onto the slot. The user namespace is held open by a child of
// the calling binary (see Hold) for the few milliseconds it takes to get its
// file descriptor.
package idmap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// holdEnv, set in a child's environment, makes the child hold its user
// namespace open until its stdin closes (see init).
const holdEnv = "_SPAWND_IDMAP_HOLD_USERNS"

func init() {
	// A child started by userns: it lives in the new user namespace only so
	// that its parent can open /proc/<pid>/ns/user; it runs no spawnd code.
	if os.Getenv(holdEnv) == "1" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
}

// Mapping says who owns the home on the host and who the server is: files
// of HostUID:HostGID on disk appear as InUID:InGID through the mount, and
// what InUID:InGID writes lands on disk as HostUID:HostGID. Nothing else is
// mapped: a file of any other owner appears as the overflow id (nobody) and
// cannot be given to anyone.
type Mapping struct {
	HostUID, HostGID int
	InUID, InGID     int
}

func (m Mapping) String() string {
	return fmt.Sprintf("host %d:%d as %d:%d", m.HostUID, m.HostGID, m.InUID, m.InGID)
}

// userns returns a file descriptor of a new user namespace that holds only
// m's mapping. The child that made it has exited when userns returns.
func userns(m Mapping) (*os.File, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this binary to make a user namespace: %w", err)
	}
	// The mount's idmapping maps the on-disk id (as if inside the
	// namespace) to the id the caller sees (outside): the person's uid is
	// the "inside" id, the image's user the "outside" one.
	cmd := exec.Command(exe)
	cmd.Env = []string{holdEnv + "=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: m.HostUID, HostID: m.InUID, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: m.HostGID, HostID: m.InGID, Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return nil, fmt.Errorf("making a user namespace (%s): %w", m, err)
	}
	f, oerr := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	stdin.Close()
	werr := cmd.Wait()
	if oerr != nil {
		return nil, fmt.Errorf("opening the new user namespace: %w", oerr)
	}
	if werr != nil {
		f.Close()
		return nil, fmt.Errorf("the user namespace holder failed: %w", werr)
	}
	return f, nil
}

// Mount makes an idmapped clone of the directory dir (an open file of it:
// the caller opened it without following symlinks) at target, an existing
// empty directory, with mapping m. Only dir itself is cloned, never mounts
// beneath it.
func Mount(dir *os.File, target string, m Mapping) error {
	ns, err := userns(m)
	if err != nil {
		return err
	}
	defer ns.Close()
	tree, err := unix.OpenTree(int(dir.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("cloning %s (open_tree; Linux 5.2 or later): %w", dir.Name(), err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		return fmt.Errorf("idmapping %s (mount_setattr; Linux 5.12 or later, on a file system that supports idmapped mounts: ext4, XFS, btrfs; tmpfs from 6.3): %w", dir.Name(), err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mounting %s on %s (move_mount): %w", dir.Name(), target, err)
	}
	return nil
}

// Unmount detaches whatever is mounted on target (a lazy unmount: a server
// that still holds it keeps it until it ends). Nothing mounted is not an
// error.
func Unmount(target string) error {
	err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmounting %s: %w", target, err)
}

// Mounted reports whether target is a mount point (its mount ID differs
// from its parent's).
func Mounted(target string) (bool, error) {
	var st, pst unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, target, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st); err != nil {
		return false, err
	}
	if err := unix.Statx(unix.AT_FDCWD, filepath.Dir(target), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &pst); err != nil {
		return false, err
	}
	return st.Mnt_id != pst.Mnt_id, nil
}
