package daemon_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// asHostUID runs sh -c script on the host as uid:gid (no supplementary
// groups), as that person's own login would.
func asHostUID(uid, gid uint32, script string) (string, error) {
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func ownerOf(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// TestHomesBelongToTheirPeople runs home_owner: range on the real engine:
// alice's and bob's homes belong to two uids of the range on the host,
// while each server runs as the image's user (1000) and owns its home
// through an idmapped mount; what a server writes lands as its person's.
// On the host, alice's uid reads her own note (the positive control) and
// not bob's, and uid 1000 (the shared owner of home_owner: env) reads
// neither. The mounts outlive a daemon restart (adoption) and are gone
// once the servers stop; the homes stay, and a new start keeps the uid.
func TestHomesBelongToTheirPeople(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.HomeOwner = spawnd.HomeOwnerRange
	cfg.UIDRange = "3100000-3100999"
	cfg.SlotsDir = testenv.SlotsDir(t)
	// Let uids other than root walk to the homes, as on a host (/srv/...).
	for _, d := range []string{filepath.Dir(cfg.HomesRoot), cfg.HomesRoot} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()

	probe := `{ id -u; stat -c %u:%g $HOME; } > $HOME/who; echo "$NOTE" > $HOME/note; mkdir -p $HOME/work; exec httpd -f -p 8888 -h $HOME`
	servers := map[string]api.Server{}
	for _, u := range []string{"alice", "bob"} {
		if _, err := h.client.Start(ctx, u, "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", probe}, Environment: map[string]string{"NOTE": "note of " + u}}); err != nil {
			t.Fatal(err)
		}
		s, err := h.client.WaitReady(ctx, u, "")
		if err != nil || !s.Ready {
			t.Fatalf("%s not ready: %+v %v", u, s, err)
		}
		servers[u] = s
		if got := httpGet(t, s, "who"); got != "1000\n1000:100\n" {
			t.Fatalf("%s's server runs as / sees its home owned by %q, want 1000 and 1000:100", u, got)
		}
	}
	home := func(u string) string { return filepath.Join(cfg.HomesRoot, spawnd.Escape(u)) }
	r := spawnd.UIDRange{First: 3100000, Last: 3100999}
	ua, ga := ownerOf(t, home("alice"))
	ub, _ := ownerOf(t, home("bob"))
	if ua == ub || !r.Contains(int(ua)) || !r.Contains(int(ub)) || ga != ua {
		t.Fatalf("homes owned by %d:%d (alice) and %d (bob); want two uids of %s, each its own group", ua, ga, ub, r)
	}
	for _, f := range []string{"note", "who", "work"} {
		if u, g := ownerOf(t, filepath.Join(home("alice"), f)); u != ua || g != ua {
			t.Fatalf("alice's server wrote %s as %d:%d on the host, want %d:%d", f, u, g, ua, ua)
		}
	}

	if out, err := asHostUID(ua, ua, "cat "+filepath.Join(home("alice"), "note")); err != nil || out != "note of alice" {
		t.Fatalf("positive control: alice's uid cannot read her own note: %q %v", out, err)
	}
	if out, err := asHostUID(ua, ua, "cat "+filepath.Join(home("bob"), "note")); err == nil {
		t.Fatalf("alice's uid read bob's note on the host: %q", out)
	}
	if out, err := asHostUID(1000, 100, "cat "+filepath.Join(home("alice"), "note")+"; cat "+filepath.Join(home("bob"), "note")); !strings.Contains(out, "Permission denied") || strings.Contains(out, "note of") {
		t.Fatalf("uid 1000 on the host: %q %v; want permission denied for both homes", out, err)
	}

	// A new daemon adopts the running servers; their homes stay mounted.
	h.stop()
	h = startDaemon(t, eng, cfg)
	// carol's start and stop make the new daemon sweep at least once after
	// her slot exists: hers goes, the adopted servers' two stay.
	if _, err := h.client.Start(ctx, "carol", "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", probe}}); err != nil {
		t.Fatal(err)
	}
	if n := slotCount(t, cfg.SlotsDir); n != 3 {
		t.Fatalf("%d slots with three servers, want 3", n)
	}
	if _, err := h.client.Stop(ctx, "carol", ""); err != nil {
		t.Fatal(err)
	}
	waitSlots(t, cfg.SlotsDir, 2)
	for u, s := range servers {
		if got := httpGet(t, s, "note"); got != "note of "+u+"\n" {
			t.Fatalf("after a daemon restart %s's server serves %q", u, got)
		}
	}

	for u := range servers {
		if _, err := h.client.Stop(ctx, u, ""); err != nil {
			t.Fatal(err)
		}
	}
	waitSlots(t, cfg.SlotsDir, 0)
	if b, err := os.ReadFile(filepath.Join(home("bob"), "note")); err != nil || string(b) != "note of bob\n" {
		t.Fatalf("bob's home after stop: %q %v", b, err)
	}
	if _, err := h.client.Start(ctx, "alice", "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", probe}, Environment: map[string]string{"NOTE": "again"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.WaitReady(ctx, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if u, _ := ownerOf(t, filepath.Join(home("alice"), "note")); u != ua {
		t.Fatalf("alice's second start wrote as %d, want her uid %d", u, ua)
	}
	if _, err := h.client.Stop(ctx, "alice", ""); err != nil {
		t.Fatal(err)
	}
	waitSlots(t, cfg.SlotsDir, 0)
}

// waitSlots waits (20 s at most) until dir holds n slots.
func waitSlots(t *testing.T, dir string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for slotCount(t, dir) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots after 20 s, want %d", slotCount(t, dir), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slotCount counts the slots (home mount points) in dir.
func slotCount(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			n++
		}
	}
	return n
}

// TestMigrateHomeToItsPerson: a home made under home_owner env (owned by
// 1000) is refused by a start under home_owner range and left as it was;
// `home migrate` (the API call) refuses while the user has a server, then
// gives every file to a uid of the range; the next start serves the same
// files; a second migration has nothing to do.
func TestMigrateHomeToItsPerson(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	write := `echo kept > $HOME/note; mkdir -p $HOME/work/deep; echo x > $HOME/work/deep/f; exec httpd -f -p 8888 -h $HOME`
	if _, err := h.client.Start(ctx, "dave", "", api.StartRequest{Cmd: []string{"/bin/sh", "-c", write}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.WaitReady(ctx, "dave", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.MigrateHome(ctx, "dave"); err == nil || !strings.Contains(err.Error(), "home_owner is env") {
		t.Fatalf("migrate under home_owner env: %v", err)
	}
	if _, err := h.client.Stop(ctx, "dave", ""); err != nil {
		t.Fatal(err)
	}
	h.stop()
	home := filepath.Join(cfg.HomesRoot, spawnd.Escape("dave"))
	if u, _ := ownerOf(t, filepath.Join(home, "note")); u != 1000 {
		t.Fatalf("home_owner env wrote as %d", u)
	}

	cfg.HomeOwner, cfg.UIDRange, cfg.SlotsDir = spawnd.HomeOwnerRange, "3101000-3101999", testenv.SlotsDir(t)
	h = startDaemon(t, eng, cfg)
	serve := []string{"/bin/sh", "-c", "exec httpd -f -p 8888 -h $HOME"}
	_, err := h.client.Start(ctx, "dave", "", api.StartRequest{Cmd: serve})
	if err == nil {
		_, err = h.client.WaitReady(ctx, "dave", "")
	}
	if err == nil || !strings.Contains(err.Error(), "spawnd home migrate") {
		t.Fatalf("a start of a home of uid 1000 under home_owner range: %v", err)
	}
	if u, _ := ownerOf(t, home); u != 1000 {
		t.Fatalf("the refused start changed the home's owner to %d", u)
	}
	if _, err := h.client.Start(ctx, "dave", "busy", api.StartRequest{Cmd: serve}); err == nil {
		t.Fatal("a named server started on a home the default one was refused")
	}
	mg, err := h.client.MigrateHome(ctx, "dave")
	if err != nil || !mg.Migrated || mg.FromUID != 1000 || mg.ToUID != 3101000 || mg.Files != 5 {
		t.Fatalf("migrate: %+v %v; want 1000 → 3101000, 5 files (home, note, work, deep, f)", mg, err)
	}
	for _, p := range []string{"", "note", "work/deep/f"} {
		if u, g := ownerOf(t, filepath.Join(home, p)); u != 3101000 || g != 3101000 {
			t.Fatalf("%s is %d:%d after the migration", p, u, g)
		}
	}
	if mg, err := h.client.MigrateHome(ctx, "dave"); err != nil || mg.Migrated {
		t.Fatalf("a second migrate: %+v %v", mg, err)
	}
	if _, err := h.client.Start(ctx, "dave", "", api.StartRequest{Cmd: serve}); err != nil {
		t.Fatal(err)
	}
	s, err := h.client.WaitReady(ctx, "dave", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := httpGet(t, s, "note"); got != "kept\n" {
		t.Fatalf("after the migration the server serves %q", got)
	}
	if _, err := h.client.MigrateHome(ctx, "dave"); err == nil || !strings.Contains(err.Error(), "stop it before the home is migrated") {
		t.Fatalf("migrate with a server running: %v", err)
	}
	if _, err := h.client.Stop(ctx, "dave", ""); err != nil {
		t.Fatal(err)
	}
	waitSlots(t, cfg.SlotsDir, 0)
}
