package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestShippedHubConfigPAM runs deploy/jupyterhub_config.py with its
// default login (PAM, system users of this machine) on real JupyterHubs 5
// and 6 in front of a real spawnd, with system users and groups the test
// makes (useradd, a password through chpasswd, the shipped config's group
// names) and removes: a member of jupyterhub-users logs in through the
// hub's form and gets a server; a wrong password is refused; someone who is
// not a member is refused and never becomes a hub user; a member of
// jupyterhub-admins is an admin, a plain member is not.
func TestShippedHubConfigPAM(t *testing.T) {
	for _, bin := range []string{"useradd", "userdel", "groupadd", "groupdel", "chpasswd", "getent"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not on PATH (Debian's passwd package): %v", bin, err)
		}
	}
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	for _, major := range []int{5, 6} {
		t.Run(fmt.Sprintf("jupyterhub%d", major), func(t *testing.T) {
			venv := testenv.HubVenv(t, major)
			ensureGroup(t, "jupyterhub-users")
			ensureGroup(t, "jupyterhub-admins")
			id := randHex(3)
			member, admin, outsider := "sptm"+id, "spta"+id, "spto"+id
			password := "pam-" + randHex(8)
			// Their host homes are in a directory of the test's (root's,
			// mode 0755, as /home is); spawnd makes each at its first start.
			accountHomes := t.TempDir()
			for _, d := range []string{filepath.Dir(accountHomes), accountHomes} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			systemUser(t, member, password, "jupyterhub-users", accountHomes)
			systemUser(t, admin, password, "jupyterhub-users,jupyterhub-admins", accountHomes)
			systemUser(t, outsider, password, "", accountHomes)

			w := newWorld(t, eng, hubEnvSpec(major), venv)
			// The host install's homes: each person's own account owns them.
			w.stopDaemon()
			w.cfg.HomeOwner, w.cfg.SlotsDir = spawnd.HomeOwnerSystem, testenv.SlotsDir(t)
			w.startDaemon()
			w.useShippedConfig("SPAWND_HUB_AUTH=pam", "SPAWND_CULL_IDLE_TIMEOUT=0")
			w.startHub("")
			defer w.stopHub()
			base := fmt.Sprintf("http://127.0.0.1:%d", w.proxyPort)

			if hubLogin(t, base, member, password+"-wrong", nil) != nil {
				t.Fatal("a wrong PAM password logged in")
			}
			if hubLogin(t, base, outsider, password, nil) != nil {
				t.Fatalf("%s, not in jupyterhub-users, logged in", outsider)
			}
			if code := w.hubAPI("GET", "/users/"+outsider, nil, nil); code != 404 {
				t.Fatalf("the hub made a user for %s (not in jupyterhub-users): %d", outsider, code)
			}
			var u struct {
				Admin bool `json:"admin"`
			}
			if hubLogin(t, base, admin, password, nil) == nil {
				t.Fatalf("%s (jupyterhub-admins) was refused\nhub log:\n%s", admin, w.logTail())
			}
			if w.hubAPI("GET", "/users/"+admin, nil, &u); !u.Admin {
				t.Fatalf("%s is in jupyterhub-admins but not a hub admin", admin)
			}
			hc := hubLogin(t, base, member, password, nil)
			if hc == nil {
				t.Fatalf("%s (jupyterhub-users) was refused\nhub log:\n%s", member, w.logTail())
			}
			if w.hubAPI("GET", "/users/"+member, nil, &u); u.Admin {
				t.Fatalf("%s is a hub admin without being in jupyterhub-admins", member)
			}
			resp, err := hc.Get(base + "/hub/spawn")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			w.waitReady(member, "")

			// A file saved through JupyterLab's contents API is the member's
			// own on the host: stat as that account (runuser) says so, and
			// the account reads it back.
			tok := w.userToken(member)
			body := map[string]any{"type": "file", "format": "text", "content": "saved by " + member + "\n"}
			if code := w.serverAPI(member, "", tok, "PUT", "/contents/mine.txt", body, nil); code != 200 && code != 201 {
				t.Fatalf("saving a file through the server: %d\nhub log:\n%s", code, w.logTail())
			}
			file := filepath.Join(accountHomes, member, "mine.txt")
			out, err := exec.Command("runuser", "-u", member, "--", "stat", "-c", "%U:%u %a", file).CombinedOutput()
			if err != nil || !strings.HasPrefix(string(out), member+":") {
				t.Fatalf("stat %s as %s: %q %v; want it owned by %s", file, member, out, err, member)
			}
			out, err = exec.Command("runuser", "-u", member, "--", "cat", file).CombinedOutput()
			if err != nil || string(out) != "saved by "+member+"\n" {
				t.Fatalf("%s cannot read their own file on the host: %q %v", member, out, err)
			}
			// The admin's login spawned a server too: a second home, the
			// admin's own, which the member's account cannot read.
			out, err = exec.Command("runuser", "-u", admin, "--", "stat", "-c", "%U", filepath.Join(accountHomes, admin)).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != admin {
				t.Fatalf("%s's home: %q %v; want it owned by %s", admin, out, err, admin)
			}
			if out, err := exec.Command("runuser", "-u", member, "--", "ls", filepath.Join(accountHomes, admin)).CombinedOutput(); err == nil {
				t.Fatalf("%s listed %s's home on the host: %q", member, admin, out)
			}
		})
	}
}

// ensureGroup makes a system group unless the host has it, and removes it
// with the test only when the test made it.
func ensureGroup(t *testing.T, name string) {
	t.Helper()
	if exec.Command("getent", "group", name).Run() == nil {
		return
	}
	run(t, "groupadd", "--system", name)
	t.Cleanup(func() { _ = exec.Command("groupdel", name).Run() })
}

// systemUser makes a system account with a password, in groups
// (comma-separated, may be empty), whose home directory is homes/<name>,
// not yet made (spawnd with home_owner system makes it), and removes it
// with the test.
func systemUser(t *testing.T, name, password, groups, homes string) {
	t.Helper()
	args := []string{"--no-create-home", "--home-dir", filepath.Join(homes, name), "--shell", "/usr/sbin/nologin", "--comment", "spawnd test user"}
	if groups != "" {
		args = append(args, "--groups", groups)
	}
	run(t, "useradd", append(args, name)...)
	t.Cleanup(func() { _ = exec.Command("userdel", name).Run() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "chpasswd")
	cmd.Stdin = strings.NewReader(name + ":" + password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chpasswd for %s: %v\n%s", name, err, out)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}
