package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"
)

func TestInstallSystemdKeepsConfigs(t *testing.T) {
	root := t.TempDir()
	self, _ := os.Executable()
	var out bytes.Buffer
	if err := installSystemd(&out, root, self, "pam"); err != nil {
		t.Fatal(err)
	}
	if env, err := os.ReadFile(filepath.Join(root, "etc/jupyterhub/environment")); err != nil || !strings.Contains(string(env), "SPAWND_HUB_AUTH=pam\n") {
		t.Fatalf("the hub's login was not chosen at install: %q %v", env, err)
	}
	tok, err := os.Stat(filepath.Join(root, "etc/spawnd/token"))
	if err != nil || tok.Mode().Perm() != 0o600 {
		t.Fatalf("token: %v %v", tok, err)
	}
	for _, f := range []string{"usr/local/bin/spawnd", "etc/systemd/system/spawnd.service", "etc/systemd/system/jupyterhub.service", "etc/spawnd/spawnd.yaml", "etc/jupyterhub/jupyterhub_config.py"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Fatalf("%s not installed: %v", f, err)
		}
	}
	// Each login gets its default owner of homes: PAM the accounts' own,
	// GitHub a uid range; both configs load.
	for auth, want := range map[string]string{"pam": "home_owner: system\n", "github": "home_owner: range\nuid_range: 2000000-2099999\n"} {
		r := root
		if auth == "github" {
			r = t.TempDir()
			if err := installSystemd(io.Discard, r, self, auth); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(filepath.Join(r, "etc/spawnd/spawnd.yaml"))
		if err != nil || !strings.Contains(string(b), want) {
			t.Fatalf("--hub-auth %s: spawnd.yaml lacks %q", auth, want)
		}
	}
	// A second install keeps the admin's config and token.
	cfg := filepath.Join(root, "etc/spawnd/spawnd.yaml")
	_ = os.WriteFile(cfg, []byte("# mine\n"), 0o644)
	first, _ := os.ReadFile(filepath.Join(root, "etc/spawnd/token"))
	out.Reset()
	if err := installSystemd(&out, root, self, "github"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(cfg); string(b) != "# mine\n" {
		t.Fatal("a second install overwrote the config")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/spawnd/token")); !bytes.Equal(b, first) {
		t.Fatal("a second install replaced the token")
	}
	if env, _ := os.ReadFile(filepath.Join(root, "etc/jupyterhub/environment")); !strings.Contains(string(env), "SPAWND_HUB_AUTH=pam\n") {
		t.Fatal("a second install replaced the admin's hub environment")
	}
	if err := installSystemd(&out, t.TempDir(), self, "dummy"); err == nil || !strings.Contains(err.Error(), "pam") {
		t.Fatalf("a shared-password hub install was not refused: %v", err)
	}
	if !strings.Contains(out.String(), "kept       /etc/spawnd/spawnd.yaml") {
		t.Fatalf("output: %s", out.String())
	}
}

// TestSystemdUnitsVerify runs systemd-analyze verify on the units, with
// ExecStart pointing at binaries that exist here.
func TestSystemdUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		ci.Skip(t, "no systemd-analyze (apt-get install systemd)")
	}
	dir := t.TempDir()
	self, _ := os.Executable()
	for _, u := range []string{"spawnd.service", "jupyterhub.service"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		unit := strings.ReplaceAll(string(b), "/usr/local/bin/spawnd", self)
		unit = strings.ReplaceAll(unit, "/opt/jupyterhub/bin/jupyterhub", self) // an executable that exists here
		if err := os.WriteFile(filepath.Join(dir, u), []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, u)).CombinedOutput()
		// docker.service may not be installed where tests run; everything else must be clean.
		var problems []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.Contains(line, "docker.service") {
				problems = append(problems, line)
			}
		}
		if err != nil && len(problems) > 0 || len(problems) > 0 {
			t.Fatalf("%s: systemd-analyze verify: %v\n%s", u, err, strings.Join(problems, "\n"))
		}
	}
}
