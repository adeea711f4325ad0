package spawnd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Who owns a home on the host (Config.HomeOwner).
const (
	HomeOwnerEnv    = "env"
	HomeOwnerSystem = "system"
	HomeOwnerRange  = "range"
)

// The host's account databases, read to keep uid_range clear of them.
var (
	passwdFile = "/etc/passwd"
	groupFile  = "/etc/group"
)

// UIDRange is an inclusive range of uids.
type UIDRange struct{ First, Last int }

// ParseUIDRange reads "first-last".
func ParseUIDRange(s string) (UIDRange, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return UIDRange{}, fmt.Errorf("%q is not first-last (e.g. 2000000-2099999)", s)
	}
	r := UIDRange{first, last}
	switch {
	case first < 1000:
		return r, fmt.Errorf("%q starts below 1000, among the system's own accounts; start at 1000 or above (e.g. 2000000-2099999)", s)
	case last < first:
		return r, fmt.Errorf("%q ends before it starts", s)
	case last >= 1<<31-2:
		return r, fmt.Errorf("%q reaches past the largest uid (2147483645)", s)
	}
	return r, nil
}

func (r UIDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Contains reports whether id is in the range.
func (r UIDRange) Contains(id int) bool { return id >= r.First && id <= r.Last }

// validateOwner checks home_owner and the keys that go with it.
func (c *Config) validateOwner() error {
	switch c.HomeOwner {
	case HomeOwnerEnv:
		if c.UIDRange != "" {
			return fmt.Errorf("uid_range: set, but home_owner is env (every home belongs to the env's user); set home_owner: range to use it, or remove uid_range")
		}
		return nil
	case HomeOwnerSystem:
		if c.UIDRange != "" {
			return fmt.Errorf("uid_range: set, but home_owner is system (each home belongs to its person's host account); remove uid_range, or set home_owner: range")
		}
		if c.MinSystemUID < 1 {
			return fmt.Errorf("min_system_uid: %d must be positive (root never owns a person's home)", c.MinSystemUID)
		}
	case HomeOwnerRange:
		if c.UIDRange == "" {
			return fmt.Errorf("uid_range: not set; home_owner range gives each person a uid from it: give first-last, clear of every host account and group (e.g. 2000000-2099999)")
		}
		if _, err := ParseUIDRange(c.UIDRange); err != nil {
			return fmt.Errorf("uid_range: %w", err)
		}
	default:
		return fmt.Errorf("home_owner: %q is not one of env, system, range", c.HomeOwner)
	}
	if !filepath.IsAbs(c.SlotsDir) {
		return fmt.Errorf("slots_dir: %q is not an absolute path", c.SlotsDir)
	}
	c.SlotsDir = filepath.Clean(c.SlotsDir)
	if c.SlotsDir == c.HomesRoot || strings.HasPrefix(c.SlotsDir, c.HomesRoot+"/") || strings.HasPrefix(c.HomesRoot, c.SlotsDir+"/") {
		return fmt.Errorf("slots_dir: %s and homes_root %s overlap; put the slots elsewhere (the default is /run/spawnd/slots/<instance>)", c.SlotsDir, c.HomesRoot)
	}
	return nil
}

// CheckUIDRange refuses a range that holds the uid of an account (passwd)
// or the gid of a group (group) of the host: a person's files would belong
// to that account. The readers are the two databases' files.
func CheckUIDRange(r UIDRange, passwd, group io.Reader) error {
	for _, db := range []struct {
		name string
		r    io.Reader
		kind string
	}{{"/etc/passwd", passwd, "account"}, {"/etc/group", group, "group"}} {
		sc := bufio.NewScanner(db.r)
		for sc.Scan() {
			f := strings.Split(sc.Text(), ":")
			if len(f) < 3 || strings.HasPrefix(f[0], "#") {
				continue
			}
			id, err := strconv.Atoi(f[2])
			if err != nil {
				continue
			}
			if r.Contains(id) && id != 65534 {
				return fmt.Errorf("uid_range %s holds %d, the id of the host %s %q (%s); choose a range clear of every account and group (e.g. 2000000-2099999)", r, id, db.kind, f[0], db.name)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("reading %s: %w", db.name, err)
		}
	}
	return nil
}

// checkHostUIDRange is CheckUIDRange against this host's files.
func checkHostUIDRange(r UIDRange) error {
	pw, err := os.Open(passwdFile)
	if err != nil {
		return fmt.Errorf("uid_range: reading the host's accounts: %w", err)
	}
	defer pw.Close()
	gr, err := os.Open(groupFile)
	if err != nil {
		return fmt.Errorf("uid_range: reading the host's groups: %w", err)
	}
	defer gr.Close()
	return CheckUIDRange(r, pw, gr)
}

// ownedHomes is a HomeStore whose homes each belong to their person on the
// host (home_owner system or range). Ensure says who owns the home
// (backend.Home.Owner); the Manager gives it to the server through an
// idmapped mount.
type ownedHomes struct {
	mode   string
	homes  *Homes // range: the homes under homes_root
	uids   UIDRange
	minUID int
	// lookup finds a host account (system); os/user.Lookup by default.
	lookup func(name string) (*user.User, error)
	mu     sync.Mutex // one range allocation at a time
}

func newOwnedHomes(cfg *Config, homes *Homes) (*ownedHomes, error) {
	o := &ownedHomes{mode: cfg.HomeOwner, homes: homes, minUID: cfg.MinSystemUID, lookup: user.Lookup}
	if cfg.HomeOwner == HomeOwnerRange {
		r, err := ParseUIDRange(cfg.UIDRange)
		if err != nil {
			return nil, fmt.Errorf("uid_range: %w", err)
		}
		if err := checkHostUIDRange(r); err != nil {
			return nil, err
		}
		o.uids = r
	}
	return o, nil
}

func (o *ownedHomes) Ensure(_ context.Context, h backend.HomeSpec) (backend.Home, error) {
	if o.mode == HomeOwnerSystem {
		acct, err := o.account(h.User)
		if err != nil {
			return backend.Home{}, err
		}
		if err := ensureAccountHome(acct); err != nil {
			return backend.Home{}, err
		}
		return backend.Home{Source: acct.home, Owner: &backend.Owner{UID: acct.uid, GID: acct.gid}}, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	uid, err := o.rangeOwner(h.User)
	if err != nil {
		return backend.Home{}, err
	}
	if uid < 0 {
		if uid, err = o.allocate(); err != nil {
			return backend.Home{}, err
		}
	}
	src, err := o.homes.Ensure(h.User, uid, uid)
	if err != nil {
		return backend.Home{}, err
	}
	return backend.Home{Source: src, Owner: &backend.Owner{UID: uid, GID: uid}}, nil
}

func (o *ownedHomes) Delete(_ context.Context, h backend.HomeSpec) error {
	if o.mode == HomeOwnerSystem {
		return errorf(ErrConflict, "with home_owner: system the home is the host account's own home directory; remove it with the account (deluser --remove-home %s), never through spawnd", h.User)
	}
	return o.homes.Delete(h.User)
}

func (o *ownedHomes) Move(context.Context, backend.HomeSpec, string) (backend.HomeMove, error) {
	return backend.HomeMove{}, errNotPinned
}

// rangeOwner returns the uid that owns user's home under homes_root, -1
// if there is no home yet; a home owned outside the range is refused.
func (o *ownedHomes) rangeOwner(name string) (int, error) {
	st, err := o.homes.stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	if !o.uids.Contains(int(st.Uid)) {
		return 0, &Error{Kind: ErrConflict, Msg: "the home of this user belongs to a uid outside uid_range; an admin must migrate it (spawnd home migrate)",
			Cause: fmt.Errorf("home %s is owned by uid %d, outside uid_range %s; `spawnd home migrate %s` gives it a uid of the range", filepath.Join(o.homes.Root(), Escape(name)), st.Uid, o.uids, name)}
	}
	return int(st.Uid), nil
}

// allocate returns the lowest uid of the range that owns no home under
// homes_root. The owner of a home is its record: no other file keeps it.
func (o *ownedHomes) allocate() (int, error) {
	used, err := o.homes.owners()
	if err != nil {
		return 0, err
	}
	for id := o.uids.First; id <= o.uids.Last; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, &Error{Kind: ErrUnavailable, Msg: "every uid of uid_range has a home; an admin must widen uid_range",
		Cause: fmt.Errorf("uid_range %s is used up (%d homes)", o.uids, len(used))}
}

// account is a host account home_owner system serves.
type account struct {
	name     string
	uid, gid int
	home     string
}

// account looks user up in the host's passwd database and checks that it
// is a person's account.
func (o *ownedHomes) account(name string) (account, error) {
	u, err := o.lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return account{}, &Error{Kind: ErrConflict, Msg: "this user has no account on the server's host; with home_owner: system every hub user needs one (an admin adds it: adduser)",
			Cause: fmt.Errorf("no host account %q (home_owner system)", name)}
	}
	if err != nil {
		return account{}, homeErr("looking up the host account %q: %v", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return account{}, homeErr("host account %q has uid %q gid %q", name, u.Uid, u.Gid)
	}
	if uid < o.minUID || uid == 0 || gid == 0 {
		return account{}, &Error{Kind: ErrConflict, Msg: "this user's host account is a system account, not a person's; spawnd gives it no server",
			Cause: fmt.Errorf("host account %q has uid %d gid %d, below min_system_uid %d or root", name, uid, gid, o.minUID)}
	}
	if !filepath.IsAbs(u.HomeDir) || filepath.Clean(u.HomeDir) == "/" {
		return account{}, homeErr("host account %q has home %q; give it a home directory of its own (usermod -d /home/%s -m %s)", name, u.HomeDir, name, name)
	}
	return account{name: name, uid: uid, gid: gid, home: filepath.Clean(u.HomeDir)}, nil
}

// ensureAccountHome makes sure an account's home exists as a directory it
// owns: a new one is made (0700) in a parent that only root may write; a
// symlink, a non-directory or a home owned by someone else is refused.
func ensureAccountHome(a account) error {
	parent, base := filepath.Split(a.home)
	root, err := os.OpenRoot(parent)
	if err != nil {
		return homeErr("opening %s, the parent of %s's home: %v", parent, a.name, err)
	}
	defer root.Close()
	fi, err := root.Lstat(base)
	if errors.Is(err, fs.ErrNotExist) {
		pfi, err := root.Stat(".")
		if err != nil {
			return homeErr("checking %s: %v", parent, err)
		}
		if err := CheckHomesRoot(filepath.Clean(parent), pfi); err != nil {
			return internal(err, "the user's home could not be prepared; an admin can find why in the daemon's log")
		}
		if err := root.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return homeErr("creating %s's home %s: %v", a.name, a.home, err)
		}
		if err := root.Lchown(base, a.uid, a.gid); err != nil {
			return homeErr("giving %s to %s: %v", a.home, a.name, err)
		}
		fi, err = root.Lstat(base)
		if err != nil {
			return homeErr("checking %s: %v", a.home, err)
		}
	} else if err != nil {
		return homeErr("checking %s's home %s: %v", a.name, a.home, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir() {
		return &Error{Kind: ErrConflict, Msg: "the home of this user is not a directory; an admin must fix it (the daemon's log names it)",
			Cause: fmt.Errorf("%s's home %s is a symlink or not a directory", a.name, a.home)}
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != a.uid {
		return &Error{Kind: ErrConflict, Msg: "the home of this user belongs to someone else on the host; an admin must fix it (the daemon's log names it)",
			Cause: fmt.Errorf("%s's home %s is owned by uid %d, not by %s (%d); fix it: chown -R %s: %s, or spawnd home migrate %s", a.name, a.home, st.Uid, a.name, a.uid, a.name, a.home, a.name)}
	}
	return nil
}

// HomeMigration is what migrating a home to its person's own uid did.
type HomeMigration struct {
	FromUID, ToUID int
	Files          int  // files and directories given to ToUID
	Migrated       bool // false: the home already belonged to its person
}

// migrate gives the home of h.User, made by home_owner env (owned by the
// image's user, from:fromGID), to its person: under range, a uid of the
// range, in place; under system, the account's own home, into which the old
// home's files are moved (same file system; refused if any name is in both).
// Nothing is ever deleted: the emptied old directory goes, its files stay.
func (o *ownedHomes) migrate(h backend.HomeSpec) (HomeMigration, error) {
	old := filepath.Join(o.homes.Root(), Escape(h.User))
	st, err := o.homes.stat(h.User)
	if errors.Is(err, fs.ErrNotExist) {
		return HomeMigration{}, errorf(ErrNotFound, "there is no home of this user under homes_root to migrate")
	}
	if err != nil {
		return HomeMigration{}, err
	}
	if fi, _ := os.Lstat(old); fi == nil || !fi.IsDir() {
		return HomeMigration{}, errorf(ErrConflict, "the home of this user under homes_root is not a directory; an admin must fix it by hand")
	}
	from, fromGID := int(st.Uid), int(st.Gid)
	if o.mode == HomeOwnerRange {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.uids.Contains(from) {
			return HomeMigration{FromUID: from, ToUID: from}, nil
		}
		to, err := o.allocate()
		if err != nil {
			return HomeMigration{}, err
		}
		n, err := chownTree(old, from, fromGID, to, to)
		if err != nil {
			return HomeMigration{}, homeErr("giving %s to uid %d: %v (after %d files; run the migration again to finish)", old, to, err, n)
		}
		return HomeMigration{FromUID: from, ToUID: to, Files: n, Migrated: true}, nil
	}

	acct, err := o.account(h.User)
	if err != nil {
		return HomeMigration{}, err
	}
	if err := ensureAccountHome(acct); err != nil {
		return HomeMigration{}, err
	}
	var dst unix.Stat_t
	if err := unix.Lstat(acct.home, &dst); err != nil {
		return HomeMigration{}, homeErr("checking %s: %v", acct.home, err)
	}
	if uint64(st.Dev) != uint64(dst.Dev) {
		return HomeMigration{}, errorf(ErrConflict, "the old home (homes_root) and the account's home %s are on different file systems; copy it by hand (rsync -a --chown=%s: OLD/ %s/), then remove the old one", acct.home, h.User, acct.home)
	}
	entries, err := os.ReadDir(old)
	if err != nil {
		return HomeMigration{}, homeErr("reading %s: %v", old, err)
	}
	var clash []string
	for _, e := range entries {
		if _, err := os.Lstat(filepath.Join(acct.home, e.Name())); err == nil {
			clash = append(clash, e.Name())
		}
	}
	if len(clash) > 0 {
		return HomeMigration{}, errorf(ErrConflict, "both the old home and the account's home %s hold %s; move or rename those in one of them, then migrate again (nothing was moved)", acct.home, strings.Join(clash, ", "))
	}
	n := 0
	for _, e := range entries {
		src, dst := filepath.Join(old, e.Name()), filepath.Join(acct.home, e.Name())
		c, err := chownTree(src, from, fromGID, acct.uid, acct.gid)
		n += c
		if err == nil {
			err = os.Rename(src, dst)
		}
		if err != nil {
			return HomeMigration{}, homeErr("moving %s into %s: %v (after %d files; run the migration again to finish)", src, acct.home, err, n)
		}
	}
	if err := os.Remove(old); err != nil {
		return HomeMigration{}, homeErr("removing the emptied old home %s: %v", old, err)
	}
	return HomeMigration{FromUID: from, ToUID: acct.uid, Files: n, Migrated: true}, nil
}

// chownTree gives every file of the tree at root (symlinks themselves,
// never what they point to) owned by fromUID to toUID, and of group
// fromGID to toGID; others keep their owners. It returns how many it
// changed.
func chownTree(root string, fromUID, fromGID, toUID, toGID int) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		uid, gid := -1, -1
		if int(st.Uid) == fromUID {
			uid = toUID
		}
		if int(st.Gid) == fromGID {
			gid = toGID
		}
		if uid == -1 && gid == -1 {
			return nil
		}
		n++
		return os.Lchown(p, uid, gid)
	})
	return n, err
}
