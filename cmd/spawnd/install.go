package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/spawnd/spawnd/deploy"
)

// installFile is one file install-systemd puts in place.
type installFile struct {
	src, dst string
	mode     fs.FileMode
	keep     bool // never overwrite: the admin's own copy
}

var installFiles = []installFile{
	{"systemd/spawnd.service", "/etc/systemd/system/spawnd.service", 0o644, false},
	{"systemd/jupyterhub.service", "/etc/systemd/system/jupyterhub.service", 0o644, false},
	{"spawnd.yaml", "/etc/spawnd/spawnd.yaml", 0o644, true},
	{"jupyterhub_config.py", "/etc/jupyterhub/jupyterhub_config.py", 0o644, true},
}

// installSystemd puts the binary, units, configs and a token under root
// ("/" for the real thing). Existing configs and tokens are kept.
func installSystemd(out io.Writer, root, binary, hubAuth string) error {
	if hubAuth != "pam" && hubAuth != "github" {
		return fmt.Errorf("--hub-auth %q: choose pam (system users of this host) or github (GitHub OAuth); a shared-password login is for scripts/quickstart on a laptop only", hubAuth)
	}
	put := func(dst string, data []byte, mode fs.FileMode, keep bool) error {
		p := filepath.Join(root, dst)
		if _, err := os.Stat(p); err == nil && keep {
			fmt.Fprintf(out, "kept       %s (exists)\n", dst)
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		tmp := p + ".new"
		if err := os.WriteFile(tmp, data, mode); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
		fmt.Fprintf(out, "installed  %s\n", dst)
		return nil
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("reading this binary: %w", err)
	}
	if err := put("/usr/local/bin/spawnd", bin, 0o755, false); err != nil {
		return err
	}
	for _, f := range installFiles {
		data, err := deploy.Files.ReadFile(f.src)
		if err != nil {
			return err
		}
		if f.src == "spawnd.yaml" && hubAuth == "github" {
			// GitHub logins have no host accounts: each person gets a uid
			// of a range of their own (clear of the host's accounts).
			data = bytes.Replace(data, []byte("home_owner: system\n"), []byte("home_owner: range\nuid_range: 2000000-2099999\n"), 1)
		}
		if err := put(f.dst, data, f.mode, f.keep); err != nil {
			return err
		}
	}
	hubEnv := "# Read by jupyterhub.service; see /etc/jupyterhub/jupyterhub_config.py.\nSPAWND_HUB_AUTH=" + hubAuth + "\n"
	if hubAuth == "github" {
		hubEnv += `# GitHub OAuth: an OAuth app's id and secret in root-only files, and who may log in.
GITHUB_CLIENT_ID_FILE=/etc/jupyterhub/github-client-id
GITHUB_CLIENT_SECRET_FILE=/etc/jupyterhub/github-client-secret
GITHUB_CALLBACK_URL=https://hub.example.org/hub/oauth_callback
GITHUB_ALLOWED_ORGS=
GITHUB_ALLOWED_USERS=
GITHUB_ADMIN_USERS=
`
	} else {
		hubEnv += "# Members of these system groups may log in / are admins.\nSPAWND_HUB_USERS_GROUP=jupyterhub-users\nSPAWND_HUB_ADMIN_GROUP=jupyterhub-admins\n"
	}
	hubEnv += "# Idle servers are stopped (their homes stay) after this many seconds; 0 keeps them.\nSPAWND_CULL_IDLE_TIMEOUT=3600\n"
	if err := put("/etc/jupyterhub/environment", []byte(hubEnv), 0o600, true); err != nil {
		return err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	tok := []byte(hex.EncodeToString(b) + "\n")
	if err := put("/etc/spawnd/token", tok, 0o600, true); err != nil {
		return err
	}
	for _, d := range []string{"/srv/spawnd/homes", "/srv/spawnd/shared"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	fmt.Fprint(out, `
Next:
  1. put your env spec in /etc/spawnd/envs/team.yaml and run: spawnd build /etc/spawnd/envs/team.yaml
  2. edit /etc/spawnd/spawnd.yaml (docs/CONFIG.md), then: spawnd doctor
  3. useradd --system --home /var/lib/jupyterhub --groups shadow jupyterhub   (shadow: PAM logins)
     install -o jupyterhub -m 600 /etc/spawnd/token /etc/jupyterhub/spawnd-token
     python3 -m venv /opt/jupyterhub
     /opt/jupyterhub/bin/pip install jupyterhub==<the env's jupyterhub> jupyterhub-idle-culler spawnd-spawner
       (spawnd-spawner: the wheel from the release, or ./hub; add oauthenticator for GitHub logins)
  4. who logs in: /etc/jupyterhub/environment (SPAWND_HUB_AUTH=`+hubAuth+`; docs/INSTALL.md)
     pam:    groupadd jupyterhub-users; groupadd jupyterhub-admins; adduser alice jupyterhub-users
  5. systemctl daemon-reload && systemctl enable --now spawnd jupyterhub
`)
	return nil
}

func newInstallSystemd() *cobra.Command {
	var root, hubAuth string
	cmd := &cobra.Command{
		Use:   "install-systemd",
		Short: "Install spawnd, its systemd units and example configs on this host",
		Long: `Copy this binary to /usr/local/bin/spawnd, install the systemd units for
spawnd and JupyterHub (/etc/systemd/system), the example /etc/spawnd/spawnd.yaml
and /etc/jupyterhub/jupyterhub_config.py with the hub's login chosen by
--hub-auth (written to /etc/jupyterhub/environment), a new API token in /etc/spawnd/token
(mode 0600), and /srv/spawnd/homes. Existing configs and tokens are kept; units
and the binary are replaced. It does not start anything: it prints the next steps.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if root == "/" && os.Geteuid() != 0 {
				return errors.New("run as root (or pass --root DIR to stage the files elsewhere)")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			return installSystemd(cmd.OutOrStdout(), root, self, hubAuth)
		},
	}
	cmd.Flags().StringVar(&root, "root", "/", "install under this directory instead of / (for packaging and tests)")
	cmd.Flags().StringVar(&hubAuth, "hub-auth", "pam", "who may log in to the hub: pam (system users, admins by group) or github (GitHub OAuth)")
	return cmd
}
