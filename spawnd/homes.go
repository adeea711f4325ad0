package spawnd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Homes owns the users' home directories under one root on the host:
// <root>/<Escape(user)>. Every access goes through an os.Root, so no name and
// no symlink planted inside the root can reach a path outside it.
type Homes struct {
	root string
}

// NewHomes returns the homes under root, which must be an absolute path.
func NewHomes(root string) (*Homes, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("homes_root %q is not an absolute path", root)
	}
	return &Homes{root: filepath.Clean(root)}, nil
}

// Root is the directory that holds every home.
func (h *Homes) Root() string { return h.root }

// Ensure makes sure user's home exists and returns its host path. A new home
// is created with mode 0700 and owned by uid:gid; an existing directory is left
// as it is. A symlink or a non-directory in its place is refused, never
// followed or replaced.
func (h *Homes) Ensure(user string, uid, gid int) (string, error) {
	name := Escape(user)
	root, err := os.OpenRoot(h.root)
	if err != nil {
		return "", homeErr("opening homes_root %s: %v; create it (mode 0755, owned by root) or fix homes_root in the config", h.root, err)
	}
	defer root.Close()
	if err := checkRootOwner(root, h.root); err != nil {
		return "", err
	}

	if fi, err := root.Lstat(name); err == nil {
		if fi.Mode()&fs.ModeSymlink != 0 {
			return "", &Error{Kind: ErrConflict, Msg: "the home of this user is a symlink; an admin must replace it with a directory (the daemon's log names it)",
				Cause: fmt.Errorf("home %s is a symlink", filepath.Join(h.root, name))}
		}
		if !fi.IsDir() {
			return "", &Error{Kind: ErrConflict, Msg: "the home of this user is not a directory; an admin must move it away (the daemon's log names it)",
				Cause: fmt.Errorf("home %s is not a directory", filepath.Join(h.root, name))}
		}
		return filepath.Join(h.root, name), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", homeErr("checking home %s: %v", filepath.Join(h.root, name), err)
	}

	if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", homeErr("creating home %s: %v; check that homes_root is writable, has free space and is owned by the daemon's user", filepath.Join(h.root, name), err)
	} else if errors.Is(err, fs.ErrExist) {
		// Lost a race with another start of the same user: recheck.
		return h.Ensure(user, uid, gid)
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", homeErr("opening new home %s: %v", filepath.Join(h.root, name), err)
	}
	defer f.Close()
	if err := f.Chown(uid, gid); err != nil {
		_ = root.Remove(name)
		return "", homeErr("setting the owner of home %s to %d:%d: %v; the daemon must run as root to give homes to users", filepath.Join(h.root, name), uid, gid, err)
	}
	if err := f.Chmod(0o700); err != nil {
		_ = root.Remove(name)
		return "", homeErr("setting the mode of home %s: %v", filepath.Join(h.root, name), err)
	}
	return filepath.Join(h.root, name), nil
}

// Exists reports whether user's home exists.
func (h *Homes) Exists(user string) (bool, error) {
	root, err := os.OpenRoot(h.root)
	if err != nil {
		return false, homeErr("opening homes_root %s: %v", h.root, err)
	}
	defer root.Close()
	_, err = root.Lstat(Escape(user))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Delete removes user's home and everything in it. It is the only code that
// deletes a home, and only the explicit admin call reaches it.
func (h *Homes) Delete(user string) error {
	root, err := os.OpenRoot(h.root)
	if err != nil {
		return homeErr("opening homes_root %s: %v", h.root, err)
	}
	defer root.Close()
	name := Escape(user)
	if _, err := root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
		return errorf(ErrNotFound, "user has no home")
	}
	if err := root.RemoveAll(name); err != nil {
		return homeErr("deleting home %s: %v", filepath.Join(h.root, name), err)
	}
	return nil
}

// checkRootOwner applies CheckHomesRoot to the open root.
func checkRootOwner(root *os.Root, path string) error {
	fi, err := root.Stat(".")
	if err != nil {
		return homeErr("checking homes_root %s: %v", path, err)
	}
	if err := CheckHomesRoot(path, fi); err != nil {
		return internal(err, "the user's home could not be prepared; an admin can find why in the daemon's log")
	}
	return nil
}

// CheckHomesRoot is the rule for homes_root, for the daemon (before every
// home it makes) and for doctor alike: owned by root or the daemon's user,
// and writable by nobody else. Whoever can write there can swap a home for
// a symlink between two starts. The error says how to fix it.
func CheckHomesRoot(path string, fi fs.FileInfo) error {
	if !fi.IsDir() {
		return fmt.Errorf("homes_root %s is not a directory; point homes_root at a directory", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if euid := uint32(os.Geteuid()); st.Uid != euid && st.Uid != 0 {
			return fmt.Errorf("homes_root %s is owned by uid %d, not by root or the daemon's user; fix it: chown root:root %s", path, st.Uid, path)
		}
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("homes_root %s is writable by group or others (mode %#o); fix it: chmod 755 %s", path, fi.Mode().Perm(), path)
	}
	return nil
}

// homeErr is a failure of the homes on the host: the person is told the
// home could not be prepared, the daemon's log says where and how to fix it.
func homeErr(format string, args ...any) error {
	return internal(fmt.Errorf(format, args...), "the user's home could not be prepared; an admin can find why in the daemon's log")
}

// HomeStore keeps users' homes where their servers run. Homes, a directory
// on the daemon's host (on Swarm: a file system every node mounts at the
// same path), is the default; the swarm backend's node-pinned homes are the
// other (the daemon gives it with WithHomes).
type HomeStore interface {
	// Ensure makes the home exist and says where a server finds it.
	Ensure(ctx context.Context, h backend.HomeSpec) (backend.Home, error)
	// Delete removes the home and everything in it; NotFound if there is none.
	Delete(ctx context.Context, h backend.HomeSpec) error
	// Move moves a node-pinned home to another node; a store whose homes
	// are on every machine answers a conflict that says so.
	Move(ctx context.Context, h backend.HomeSpec, node string) (backend.HomeMove, error)
}

// errNotPinned is Move's answer where homes are not pinned to nodes.
var errNotPinned = errorf(ErrConflict, "homes here are not pinned to nodes (engine.homes: node, on Swarm): every server mounts the same home, so there is nothing to move")

// hostHomes is Homes as a HomeStore: every server mounts the home from the
// same host path, wherever it runs.
type hostHomes struct{ h *Homes }

func (s hostHomes) Ensure(_ context.Context, h backend.HomeSpec) (backend.Home, error) {
	src, err := s.h.Ensure(h.User, h.UID, h.GID)
	return backend.Home{Source: src}, err
}

func (s hostHomes) Delete(_ context.Context, h backend.HomeSpec) error { return s.h.Delete(h.User) }

func (hostHomes) Move(context.Context, backend.HomeSpec, string) (backend.HomeMove, error) {
	return backend.HomeMove{}, errNotPinned
}

// storeErr classifies a failure of a home store on the nodes: its own
// kinds (errdefs) become the core's, with its message, which names nodes
// and never a host path; anything else is for the log.
func storeErr(err error) error {
	var e *Error
	var up *backend.Unplaceable
	switch {
	case errors.As(err, &e), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &up):
		return &Error{Kind: ErrUnavailable, Msg: "No machine can hold this user's home now: " + up.Reason, Cause: err}
	case errdefs.IsInvalidArgument(err):
		return &Error{Kind: ErrInvalid, Msg: err.Error()}
	case errdefs.IsNotFound(err):
		return &Error{Kind: ErrNotFound, Msg: err.Error()}
	case errdefs.IsConflict(err):
		return &Error{Kind: ErrConflict, Msg: err.Error()}
	case errdefs.IsUnavailable(err):
		return &Error{Kind: ErrUnavailable, Msg: err.Error()}
	}
	return internal(err, "the user's home could not be prepared; an admin can find why in the daemon's log")
}

// adminStoreErr is storeErr for an admin's call (delete, move): what would
// be internal keeps its detail in the message, which names nodes and the
// helpers' reasons, for the admin who asked (the daemon's token holder).
func adminStoreErr(err error) error {
	err = storeErr(err)
	var e *Error
	if errors.As(err, &e) && e.Kind == nil && e.Cause != nil {
		return &Error{Msg: e.Cause.Error()}
	}
	return err
}

// stat returns the owner and mode of user's home without following a
// symlink in its place.
func (h *Homes) stat(user string) (*syscall.Stat_t, error) {
	root, err := os.OpenRoot(h.root)
	if err != nil {
		return nil, homeErr("opening homes_root %s: %v", h.root, err)
	}
	defer root.Close()
	fi, err := root.Lstat(Escape(user))
	if err != nil {
		return nil, err
	}
	return fi.Sys().(*syscall.Stat_t), nil
}

// owners returns the uids that own a home under the root.
func (h *Homes) owners() (map[int]bool, error) {
	entries, err := os.ReadDir(h.root)
	if err != nil {
		return nil, homeErr("reading homes_root %s: %v", h.root, err)
	}
	used := make(map[int]bool, len(entries))
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		used[int(fi.Sys().(*syscall.Stat_t).Uid)] = true
	}
	return used, nil
}
