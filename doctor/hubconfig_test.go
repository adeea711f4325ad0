package doctor

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd"
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
	long := filepath.Join(dir, "admin-password")
	if err := os.WriteFile(long, []byte("a-long-admin-password\n"), 0o600); err != nil {
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
		{"shipped, dummy behind a front", string(shipped), "SPAWND_HUB_AUTH=dummy\nSPAWND_HUB_PASSWORD='long enough'\nSPAWND_HUB_FRONT=https://hub.example.org/\n", Fail, "behind the HTTPS front"},
		{"shipped, native without the admin's password", string(shipped), "SPAWND_HUB_AUTH=native\n", Fail, "would become the admin"},
		{"shipped, native, admin's password file gone", string(shipped), "SPAWND_HUB_AUTH=native\nSPAWND_HUB_ADMIN_PASSWORD_FILE=" + secret + "-gone\n", Fail, "no such file"},
		{"shipped, native, short admin password", string(shipped), "SPAWND_HUB_AUTH=native\nSPAWND_HUB_ADMIN_PASSWORD_FILE=" + secret + "\n", Fail, "shorter than 12"},
		{"shipped, native", string(shipped), "SPAWND_HUB_AUTH=native\nSPAWND_HUB_ADMIN_PASSWORD_FILE=" + long + "\n", OK, "admin's approval"},
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

// TestProbeFront: the front door over real TLS (an httptest TLS server
// standing in for Caddy in front of a login form): plain HTTP is refused
// outright; a certificate nobody vouches for fails, naming --front-ca; with
// its CA given, a front that refuses the made-up login passes and one that
// logs it in fails.
func TestProbeFront(t *testing.T) {
	mk := func(letIn bool) *httptest.Server {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if r.Method == "POST" && letIn {
				http.SetCookie(rw, &http.Cookie{Name: "jupyterhub-hub-login", Value: "yes", Path: "/hub/"})
			}
			_, _ = rw.Write([]byte(`<form><input name="password"></form>`))
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	caFile := func(srv *httptest.Server) string {
		p := filepath.Join(t.TempDir(), "ca.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		if err := os.WriteFile(p, pemBytes, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	refusing, welcoming := mk(false), mk(true)
	ctx := context.Background()
	for _, tc := range []struct {
		name, front, ca string
		want            Status
		says            string
	}{
		{"plain HTTP", "http://hub.example.org/", "", Fail, "not HTTPS"},
		{"a certificate nobody vouches for", refusing.URL, "", Fail, "certificate"},
		{"its CA given, the login refused", refusing.URL, caFile(refusing), OK, "were refused"},
		{"its CA given, a made-up login let in", welcoming.URL, caFile(welcoming), Fail, "logged in a made-up user"},
		{"a CA file that is not PEM", refusing.URL, "/dev/null", Fail, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := probeFront(ctx, tc.front, tc.ca)
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.says) {
				t.Fatalf("probeFront(%s): %+v; want %s saying %q", tc.front, r, tc.want, tc.says)
			}
			if tc.says == "certificate" && !strings.Contains(r.Fix, "--front-ca") {
				t.Errorf("the fix does not name --front-ca: %q", r.Fix)
			}
		})
	}
}

// TestHomeOwners: homes owned by a login account of the host are a
// warning that names the account and the fix; by an account without a
// login, or by a uid with no account, they pass and say so. Real
// directories chowned to each uid (root needed), a passwd file of the
// test's own.
func TestHomeOwners(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "chown needs root")
	}
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\n"+
		"debian:x:41000:100:Debian:/home/debian:/bin/bash\n"+
		"svc:x:41001:100::/nonexistent:/usr/sbin/nologin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		uids []int
		want Status
		says string
	}{
		{"owned by a login account", []int{41000, 41000}, Warn, `2 home(s) in`},
		{"owned by an account without a login", []int{41001}, OK, "svc, no login"},
		{"owned by a uid with no account", []int{41002}, OK, "no host account"},
		{"no homes", nil, OK, "no homes yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for i, uid := range tc.uids {
				d := filepath.Join(root, fmt.Sprintf("user%d", i))
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(d, uid, 100); err != nil {
					t.Fatal(err)
				}
			}
			r := checkHomeOwners(spawnd.Config{HomesRoot: root, HomeOwner: spawnd.HomeOwnerEnv}, passwd)
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.says) {
				t.Fatalf("%+v; want %s saying %q", r, tc.want, tc.says)
			}
			if tc.want == Warn && (!strings.Contains(r.Detail, `"debian"`) || !strings.Contains(r.Fix, "usermod -s /usr/sbin/nologin debian") || !strings.Contains(r.Fix, "home_owner: system")) {
				t.Errorf("the warning does not name the account and its fix: %+v", r)
			}
		})
	}
}

// TestHomeOwnersByMode: under home_owner range, homes outside the range
// wait for migrate (named), two homes on one uid fail, a range that holds
// a host account fails; under system, homes left in homes_root wait for
// migrate.
func TestHomeOwnersByMode(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "chown needs root")
	}
	etc := t.TempDir()
	passwd := filepath.Join(etc, "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:100::/home/debian:/bin/bash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nusers:x:100:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		mode, rg string
		homes    map[string]int
		want     Status
		says     string
	}{
		{"range, each its own", "range", "4300000-4300999", map[string]int{"alice": 4300000, "bob": 4300001}, OK, "each its own uid"},
		{"range, one left from env", "range", "4300000-4300999", map[string]int{"alice": 4300000, "dave": 1000}, Warn, "spawnd home migrate dave"},
		{"range, two on one uid", "range", "4300000-4300999", map[string]int{"alice": 4300000, "bob": 4300000}, Fail, "share uid 4300000"},
		{"range over an account", "range", "1000-1999", nil, Fail, `"debian"`},
		{"system, one left", "system", "", map[string]int{"carol": 1000}, Warn, "spawnd home migrate carol"},
		{"system, none left", "system", "", nil, OK, "host account's own"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, uid := range tc.homes {
				d := filepath.Join(root, name)
				if err := os.Mkdir(d, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(d, uid, uid); err != nil {
					t.Fatal(err)
				}
			}
			r := checkHomeOwners(spawnd.Config{HomesRoot: root, HomeOwner: tc.mode, UIDRange: tc.rg}, passwd)
			if r.Status != tc.want || !strings.Contains(r.Detail+" "+r.Fix, tc.says) {
				t.Fatalf("%+v; want %s saying %q", r, tc.want, tc.says)
			}
		})
	}
}
