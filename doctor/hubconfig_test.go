package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHubLoginConfigs(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join("..", "deploy", "jupyterhub_config.py"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	gh := "SPAWND_HUB_AUTH=github\nGITHUB_CLIENT_ID_FILE=" + secret + "\nGITHUB_CLIENT_SECRET_FILE=" + secret + "\n"
	cases := []struct {
		name, config, env string
		want              Status
		says              string
	}{
		{"shipped, no environment: PAM", string(shipped), "", OK, "PAM"},
		{"shipped, pam", string(shipped), "SPAWND_HUB_AUTH=pam\nSPAWND_HUB_USERS_GROUP=lab\n", OK, "group lab"},
		{"shipped, dummy without a password", string(shipped), "SPAWND_HUB_AUTH=dummy\n", Fail, "anyone could log in"},
		{"shipped, dummy, short password", string(shipped), "SPAWND_HUB_AUTH=dummy\nSPAWND_HUB_PASSWORD=abc\n", Fail, "shorter than 8"},
		{"shipped, dummy on every address", string(shipped), "SPAWND_HUB_AUTH=dummy\nSPAWND_HUB_PASSWORD='long enough'\nSPAWND_HUB_BIND=0.0.0.0\n", Fail, "reachable from other machines"},
		{"shipped, dummy on loopback", string(shipped), "SPAWND_HUB_AUTH=dummy\nSPAWND_HUB_PASSWORD=\"long enough\"\n", Warn, "laptop"},
		{"shipped, github without allowed", string(shipped), gh, Fail, "every GitHub user"},
		{"shipped, github without its secret", string(shipped), "SPAWND_HUB_AUTH=github\n", Fail, "GITHUB_CLIENT_ID_FILE"},
		{"shipped, github secret file missing", string(shipped), strings.Replace(gh, secret, secret+"-gone", 1) + "GITHUB_ALLOWED_ORGS=lab\n", Fail, "no such file"},
		{"shipped, github", string(shipped), gh + "GITHUB_ALLOWED_ORGS=lab\n", OK, "organisations lab"},
		{"shipped, unknown", string(shipped), "SPAWND_HUB_AUTH=none\n", Fail, "not one of"},
		{"custom dummy, no password", "c.JupyterHub.authenticator_class = 'dummy'\n", "", Fail, "any password"},
		{"custom dummy class, no password", "from jupyterhub.auth import DummyAuthenticator\nc.JupyterHub.authenticator_class = DummyAuthenticator\n", "", Fail, "any password"},
		{"custom dummy on every address", "c.JupyterHub.authenticator_class = 'dummy'\nc.DummyAuthenticator.password = 'x'\nc.JupyterHub.ip = '0.0.0.0'\n", "", Fail, "every address"},
		{"custom dummy with a password", "c.JupyterHub.authenticator_class = 'dummy'\nc.DummyAuthenticator.password = 'x'\n", "", Warn, "shared password"},
		{"custom allow_all", "c.JupyterHub.authenticator_class = 'github'\nc.GitHubOAuthenticator.allow_all = True\n", "", Warn, "allow_all"},
		{"custom pam", "c.JupyterHub.authenticator_class = 'pam'\n", "", OK, "no shared-password"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			conf, env := filepath.Join(d, "jupyterhub_config.py"), filepath.Join(d, "environment")
			_ = os.WriteFile(conf, []byte(tc.config), 0o644)
			if tc.env != "" {
				_ = os.WriteFile(env, []byte("# comment\n"+tc.env), 0o600)
			}
			r := checkHubConfig(HubConfig{Path: conf, EnvPath: env})
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.says) {
				t.Fatalf("%+v, want %s saying %q", r, tc.want, tc.says)
			}
			if r.Status != OK && r.Fix == "" {
				t.Fatalf("no fix: %+v", r)
			}
		})
	}
}

func TestHubConfigMissing(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "nope.py")
	if r := checkHubConfig(HubConfig{Path: gone}); r.Status != Skip {
		t.Fatalf("the default path absent: %+v, want a skip", r)
	}
	if r := checkHubConfig(HubConfig{Path: gone, Explicit: true}); r.Status != Fail {
		t.Fatalf("a named config absent: %+v, want a failure", r)
	}
}
