package spawnd

import (
	"context"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

func TestParseUIDRange(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    UIDRange
	}{
		{in: "2000000-2099999", want: UIDRange{2000000, 2099999}},
		{in: " 5000 - 5000 ", want: UIDRange{5000, 5000}},
		{in: "2000000", err: "is not first-last"},
		{in: "a-b", err: "is not first-last"},
		{in: "0-2000", err: "starts below 1000"},
		{in: "3000-2000", err: "ends before it starts"},
		{in: "2000-2147483647", err: "past the largest uid"},
	} {
		got, err := ParseUIDRange(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseUIDRange(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseUIDRange(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestCheckUIDRangeRefusesHostAccounts(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\n# a comment\nalice:x:1001:1001::/home/alice:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\nbroken line\n"
	group := "root:x:0:\nlab:x:5005:\n"
	for _, tc := range []struct {
		r   UIDRange
		err string
	}{
		{UIDRange{2000, 4999}, ""},
		{UIDRange{1000, 1999}, `the host account "alice"`},
		{UIDRange{5000, 6000}, `the host group "lab"`},
		{UIDRange{60000, 70000}, ""}, // nobody's 65534 is everyone's overflow id, never a person's
	} {
		err := CheckUIDRange(tc.r, strings.NewReader(passwd), strings.NewReader(group))
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("CheckUIDRange(%v) = %v; want %q", tc.r, err, tc.err)
		}
	}
}

func TestHomeOwnerConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		err  string
	}{
		{"env is the default", func(c *Config) {}, ""},
		{"unknown mode", func(c *Config) { c.HomeOwner = "ldap" }, "home_owner: \"ldap\" is not one of env, system, range"},
		{"range needs a range", func(c *Config) { c.HomeOwner = HomeOwnerRange }, "uid_range: not set"},
		{"a bad range", func(c *Config) { c.HomeOwner, c.UIDRange = HomeOwnerRange, "12-3" }, "uid_range: \"12-3\" starts below 1000"},
		{"a range without range", func(c *Config) { c.UIDRange = "2000000-2000100" }, "set home_owner: range"},
		{"system with a range", func(c *Config) { c.HomeOwner, c.UIDRange = HomeOwnerSystem, "2000000-2000100" }, "remove uid_range"},
		{"slots inside homes_root", func(c *Config) { c.HomeOwner, c.SlotsDir = HomeOwnerSystem, filepath.Join(c.HomesRoot, "slots") }, "overlap"},
		{"relative slots", func(c *Config) { c.HomeOwner, c.SlotsDir = HomeOwnerSystem, "slots" }, "not an absolute path"},
		{"system", func(c *Config) { c.HomeOwner = HomeOwnerSystem }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t)
			tc.set(&c)
			err := c.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate() = %v; want %q", err, tc.err)
			}
			if err == nil && c.HomeOwner == HomeOwnerSystem && c.SlotsDir != "/run/spawnd/slots/unit" {
				t.Fatalf("default slots_dir %q", c.SlotsDir)
			}
		})
	}
}

func mustRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("homes with their own owners need root (chown); run the tests as root")
	}
}

func statOwner(t *testing.T, p string) int {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

// TestRangeHomesGetTheirOwnUIDs: each new home gets the lowest free uid of
// the range, the owner is the record (a second Ensure keeps it), a home
// owned outside the range is refused naming `spawnd home migrate`, and a
// used-up range is refused.
func TestRangeHomesGetTheirOwnUIDs(t *testing.T) {
	mustRoot(t)
	homes, err := NewHomes(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	o := &ownedHomes{mode: HomeOwnerRange, homes: homes, uids: UIDRange{4100000, 4100001}}
	ctx := context.Background()
	ensure := func(u string) (backend.Home, error) {
		return o.Ensure(ctx, backend.HomeSpec{User: u, UID: 1000, GID: 100})
	}
	a, err := ensure("alice")
	if err != nil || a.Owner == nil || *a.Owner != (backend.Owner{UID: 4100000, GID: 4100000}) || statOwner(t, a.Source) != 4100000 {
		t.Fatalf("alice: %+v %v", a, err)
	}
	b, err := ensure("bob")
	if err != nil || b.Owner.UID != 4100001 || statOwner(t, b.Source) != 4100001 {
		t.Fatalf("bob: %+v %v", b, err)
	}
	if again, err := ensure("alice"); err != nil || again.Owner.UID != 4100000 {
		t.Fatalf("alice again: %+v %v", again, err)
	}
	if _, err := ensure("carol"); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "widen uid_range") {
		t.Fatalf("a third home in a range of two: %v", err)
	}
	old := filepath.Join(homes.Root(), Escape("dave"))
	if err := os.Mkdir(old, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(old, 1000, 100); err != nil {
		t.Fatal(err)
	}
	_, err = ensure("dave")
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrConflict) || !strings.Contains(e.Msg, "spawnd home migrate") || !strings.Contains(e.Cause.Error(), "owned by uid 1000, outside uid_range") {
		t.Fatalf("a home of uid 1000 under range: %v", err)
	}
	if statOwner(t, old) != 1000 {
		t.Fatal("the refused home changed owner")
	}
}

// TestSystemHomesAreTheAccountsOwn: the home is the account's home
// directory, made when missing and owned by it; no account, a system
// account, a symlink or a home owned by someone else is refused and
// changes nothing.
func TestSystemHomesAreTheAccountsOwn(t *testing.T) {
	mustRoot(t)
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	accounts := map[string]*user.User{
		"alice":  {Username: "alice", Uid: "4200001", Gid: "4200001", HomeDir: filepath.Join(parent, "alice")},
		"daemon": {Username: "daemon", Uid: "1", Gid: "1", HomeDir: filepath.Join(parent, "daemon")},
		"linked": {Username: "linked", Uid: "4200002", Gid: "4200002", HomeDir: filepath.Join(parent, "linked")},
		"taken":  {Username: "taken", Uid: "4200003", Gid: "4200003", HomeDir: filepath.Join(parent, "taken")},
		"roots":  {Username: "roots", Uid: "4200004", Gid: "4200004", HomeDir: "/"},
	}
	o := &ownedHomes{mode: HomeOwnerSystem, minUID: 1000, lookup: func(name string) (*user.User, error) {
		if u, ok := accounts[name]; ok {
			return u, nil
		}
		return nil, user.UnknownUserError(name)
	}}
	if err := os.Symlink("/etc", filepath.Join(parent, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(parent, "taken"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h, err := o.Ensure(ctx, backend.HomeSpec{User: "alice"})
	if err != nil || h.Source != accounts["alice"].HomeDir || h.Owner.UID != 4200001 || h.Owner.GID != 4200001 {
		t.Fatalf("alice: %+v %v", h, err)
	}
	if statOwner(t, h.Source) != 4200001 {
		t.Fatal("alice's new home is not hers")
	}
	for _, tc := range []struct{ user, msg, cause string }{
		{"nobody-here", "has no account on the server's host", `no host account "nobody-here"`},
		{"daemon", "a system account", "below min_system_uid 1000"},
		{"linked", "not a directory", "symlink"},
		{"taken", "belongs to someone else", "owned by uid 0, not by taken (" + strconv.Itoa(4200003) + ")"},
		{"roots", "could not be prepared", `has home "/"`},
	} {
		_, err := o.Ensure(ctx, backend.HomeSpec{User: tc.user})
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(e.Msg, tc.msg) || e.Cause == nil || !strings.Contains(e.Cause.Error(), tc.cause) {
			t.Errorf("%s: %v (cause %v); want %q and %q", tc.user, err, errCause(err), tc.msg, tc.cause)
		}
	}
	if statOwner(t, filepath.Join(parent, "taken")) != 0 {
		t.Fatal("a refused home changed owner")
	}
	if err := o.Delete(ctx, backend.HomeSpec{User: "alice"}); err == nil || !strings.Contains(err.Error(), "deluser --remove-home") {
		t.Fatalf("deleting an account's home through spawnd: %v", err)
	}
	if _, err := os.Stat(h.Source); err != nil {
		t.Fatal("the refused delete removed the home")
	}
}

func errCause(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e.Cause
	}
	return nil
}

// TestOwnedHomesNeedTheHostsMountNamespace: a daemon in a mount namespace
// of its own is refused (the engine would never see its mounts).
func TestOwnedHomesNeedTheHostsMountNamespace(t *testing.T) {
	old := hostMountNS
	t.Cleanup(func() { hostMountNS = old })
	hostMountNS = "/proc/self/ns/mnt"
	if err := sameMountNamespace(); err != nil {
		t.Fatalf("the same namespace: %v", err)
	}
	hostMountNS = "/proc/self/ns/net" // a different namespace's link, readable here
	if err := sameMountNamespace(); err == nil || !strings.Contains(err.Error(), "mount namespace of its own") {
		t.Fatalf("another namespace: %v", err)
	}
}

// TestRangeOverHostAccountsRefusedAtStart: a daemon whose uid_range holds
// a host account does not start, and names the account.
func TestRangeOverHostAccountsRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	pw, gr := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(pw, []byte("root:x:0:0::/root:/bin/sh\nlab:x:2000050:100::/home/lab:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gr, []byte("root:x:0:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	oldPw, oldGr := passwdFile, groupFile
	t.Cleanup(func() { passwdFile, groupFile = oldPw, oldGr })
	passwdFile, groupFile = pw, gr
	cfg := testConfig(t)
	cfg.HomeOwner, cfg.UIDRange, cfg.SlotsDir = HomeOwnerRange, "2000000-2000999", filepath.Join(dir, "slots")
	_, err := NewManager(cfg, backend.Set{Runtime: fakebackend.New()}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), `holds 2000050, the id of the host account "lab"`) {
		t.Fatalf("NewManager with a range over an account: %v", err)
	}
	if _, err := os.Stat(cfg.SlotsDir); err == nil {
		t.Fatal("the refused daemon made its slots_dir")
	}
}
