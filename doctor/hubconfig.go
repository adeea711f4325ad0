package doctor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// HubConfig is where the hub's config and its environment file are: the
// shipped config reads its choices (SPAWND_HUB_AUTH and the rest) from the
// environment, which systemd takes from the environment file.
type HubConfig struct {
	Path    string // jupyterhub_config.py
	EnvPath string // the unit's EnvironmentFile, "" when none
	// Explicit is true when the admin named the config; a missing file is
	// then a failure, not a skip.
	Explicit bool
}

var (
	reDummy        = regexp.MustCompile(`DummyAuthenticator|authenticator_class\s*=\s*["']dummy["']`)
	reDummyPass    = regexp.MustCompile(`(?m)^\s*c\.DummyAuthenticator\.password\s*=\s*\S`)
	reAllowAll     = regexp.MustCompile(`(?m)^\s*c\.\w*Authenticator\.allow_all\s*=\s*True`)
	reWideIP       = regexp.MustCompile(`(?m)^\s*c\.JupyterHub\.ip\s*=\s*["'](0\.0\.0\.0|::|)["']`)
	reShippedMaker = regexp.MustCompile(`SPAWND_HUB_AUTH`)
)

// checkHubConfig reads the hub's config (without running it) and reports
// a login that lets strangers in.
func checkHubConfig(hc HubConfig) Result {
	const check = "hub login"
	if hc.Path == "" {
		return Result{check, Skip, "not checked (pass --hub-config /etc/jupyterhub/jupyterhub_config.py)", ""}
	}
	src, err := os.ReadFile(hc.Path)
	if errors.Is(err, fs.ErrNotExist) && !hc.Explicit {
		return Result{check, Skip, "no hub config at " + hc.Path + " (pass --hub-config)", ""}
	}
	if err != nil {
		return Result{check, Fail, "cannot read the hub config: " + oneLine(err), "pass --hub-config with the file the hub runs"}
	}
	env := map[string]string{}
	if hc.EnvPath != "" {
		b, err := os.ReadFile(hc.EnvPath)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Result{check, Fail, "cannot read the hub's environment file: " + oneLine(err), "check " + hc.EnvPath}
		}
		env = parseEnvFile(b)
	}
	if reShippedMaker.Match(src) {
		return shippedLogin(env)
	}
	dummy := reDummy.Match(src)
	switch {
	case dummy && !reDummyPass.Match(src):
		return Result{check, Fail, hc.Path + " uses the dummy authenticator without a password: any password logs anyone in, as admin too",
			"use a real authenticator (PAM, GitHub OAuth), or the shipped config with SPAWND_HUB_AUTH=pam (docs/INSTALL.md)"}
	case dummy && reWideIP.Match(src):
		return Result{check, Fail, hc.Path + " serves a shared-password login on every address",
			"set c.JupyterHub.ip = \"127.0.0.1\" and put Caddy in front, or use a real authenticator"}
	case dummy:
		return Result{check, Warn, hc.Path + " uses the dummy authenticator: one shared password for everyone (a laptop set-up)",
			"use PAM or GitHub OAuth for a team (docs/INSTALL.md)"}
	case reAllowAll.Match(src):
		return Result{check, Warn, hc.Path + " sets allow_all: everyone the authenticator accepts may log in",
			"list who may log in (allowed_users, allowed_groups, allowed_organizations)"}
	}
	return Result{check, OK, hc.Path + ": no shared-password or allow-all login (read, not run)", ""}
}

// shippedLogin judges the shipped config's choice. The config itself refuses
// to start with these mistakes; doctor says so before a restart does.
func shippedLogin(env map[string]string) Result {
	const check = "hub login"
	auth := env["SPAWND_HUB_AUTH"]
	if auth == "" {
		auth = "pam"
	}
	switch auth {
	case "pam":
		group := env["SPAWND_HUB_USERS_GROUP"]
		if group == "" {
			group = "jupyterhub-users"
		}
		return Result{check, OK, "system users (PAM) in group " + group, ""}
	case "github":
		for _, k := range []string{"GITHUB_CLIENT_ID_FILE", "GITHUB_CLIENT_SECRET_FILE"} {
			if env[k] == "" {
				return Result{check, Fail, "SPAWND_HUB_AUTH=github without " + k + ": the hub will refuse to start", "write the value to a root-only file and set " + k}
			}
			if _, err := os.Stat(env[k]); err != nil {
				return Result{check, Fail, k + ": " + oneLine(err), "write the OAuth app's value to " + env[k]}
			}
		}
		if env["GITHUB_ALLOWED_ORGS"] == "" && env["GITHUB_ALLOWED_USERS"] == "" {
			return Result{check, Fail, "SPAWND_HUB_AUTH=github without GITHUB_ALLOWED_ORGS or GITHUB_ALLOWED_USERS: every GitHub user could log in (the hub refuses to start)",
				"set GITHUB_ALLOWED_ORGS=my-lab and/or GITHUB_ALLOWED_USERS=alice,bob"}
		}
		return Result{check, OK, "GitHub OAuth, organisations " + orNone(env["GITHUB_ALLOWED_ORGS"]) + ", users " + orNone(env["GITHUB_ALLOWED_USERS"]), ""}
	case "dummy":
		pw := env["SPAWND_HUB_PASSWORD"]
		bind := env["SPAWND_HUB_BIND"]
		if bind == "" {
			bind = "127.0.0.1"
		}
		switch {
		case pw == "":
			return Result{check, Fail, "SPAWND_HUB_AUTH=dummy without SPAWND_HUB_PASSWORD: anyone could log in as anyone (the hub refuses to start)",
				"use SPAWND_HUB_AUTH=pam or github (spawnd install-systemd --hub-auth)"}
		case len(pw) < 8:
			return Result{check, Fail, "SPAWND_HUB_PASSWORD is shorter than 8 characters (the hub refuses to start)", "use SPAWND_HUB_AUTH=pam or github, or a longer password"}
		case !isLoopback(bind):
			return Result{check, Fail, "a shared-password login on " + bind + ", reachable from other machines (the hub refuses to start)",
				"use SPAWND_HUB_AUTH=pam or github"}
		case env["SPAWND_HUB_FRONT"] != "":
			return Result{check, Fail, "a shared-password login behind the HTTPS front " + env["SPAWND_HUB_FRONT"] + ", which other machines reach (the hub refuses to start)",
				"use SPAWND_HUB_AUTH=pam, github or native"}
		}
		return Result{check, Warn, "one shared password on " + bind + " (a laptop set-up)", "use SPAWND_HUB_AUTH=pam or github for a team"}
	case "native":
		pwFile := env["SPAWND_HUB_ADMIN_PASSWORD_FILE"]
		if pwFile == "" {
			return Result{check, Fail, "SPAWND_HUB_AUTH=native without SPAWND_HUB_ADMIN_PASSWORD_FILE: whoever signed up first as admin would become the admin (the hub refuses to start)",
				"write a password of 12+ characters to a root-only file and set SPAWND_HUB_ADMIN_PASSWORD_FILE"}
		}
		b, err := os.ReadFile(pwFile)
		if err != nil {
			return Result{check, Fail, "SPAWND_HUB_ADMIN_PASSWORD_FILE: " + oneLine(err), "write the admin's password (12+ characters) to " + pwFile}
		}
		if len(strings.TrimSpace(string(b))) < 12 {
			return Result{check, Fail, "the admin's password in " + pwFile + " is shorter than 12 characters (the hub refuses to start)", "write a longer one"}
		}
		return Result{check, OK, "sign-up with the admin's approval (nativeauthenticator); the admin account is made at start", ""}
	}
	return Result{check, Fail, "SPAWND_HUB_AUTH=" + auth + " is not one of pam, native, github, dummy (the hub refuses to start)", "set SPAWND_HUB_AUTH=pam or github"}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, # comments,
// optional quotes.
func parseEnvFile(b []byte) map[string]string {
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[strings.TrimSpace(k)] = v
	}
	return env
}

// probeLogin tries the running hub's login form with a made-up user and
// password, as a stranger would. A hub that accepts them fails. (Only such
// a hub changes: it now knows the made-up user, whom the fix names.)
func probeLogin(ctx context.Context, base string) Result {
	return probeLoginWith(ctx, "hub probe", base, nil)
}

// probeLoginWith is probeLogin through a transport of its own (nil: the
// default), reported under check.
func probeLoginWith(ctx context.Context, check, base string, tr http.RoundTripper) Result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	buf := make([]byte, 6)
	_, _ = rand.Read(buf)
	user := "spawnd-doctor-" + hex.EncodeToString(buf[:3])
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	base = strings.TrimRight(base, "/")
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/hub/login", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return Result{check, Fail, "the login page does not answer: " + oneLine(err), "check the hub's log"}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	xsrf := ""
	var cookies []*http.Cookie
	for _, c := range resp.Cookies() {
		cookies = append(cookies, c)
		if c.Name == "_xsrf" {
			xsrf = c.Value
		}
	}
	form := url.Values{"username": {user}, "password": {hex.EncodeToString(buf)}, "_xsrf": {xsrf}}
	req, _ = http.NewRequestWithContext(ctx, "POST", base+"/hub/login?next=", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range cookies {
		req.AddCookie(c)
	}
	resp, err = hc.Do(req)
	if err != nil {
		return Result{check, Fail, "the login form does not answer: " + oneLine(err), "check the hub's log"}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "jupyterhub-hub-login" && c.Value != "" {
			return Result{check, Fail, "the hub at " + base + " logged in a made-up user (" + user + ") with a made-up password",
				"use a real authenticator (docs/INSTALL.md), restart the hub, and delete the user " + user + " in the admin page"}
		}
	}
	return Result{check, OK, "a made-up user and password were refused at " + base, ""}
}

// probeFront checks the hub's front door (Caddy or another proxy) as the
// people who use it reach it: HTTPS with a certificate that verifies
// (against the system's roots, and caFile when given, e.g. Caddy's own CA),
// then the made-up login, refused.
func probeFront(ctx context.Context, front, caFile string) Result {
	const check = "front probe"
	u, err := url.Parse(front)
	if err != nil || u.Host == "" {
		return Result{check, Fail, "--front-url " + front + " is not a URL", "give the address people use, e.g. https://hub.example.org/"}
	}
	if u.Scheme != "https" {
		return Result{check, Fail, front + " is not HTTPS: passwords and session cookies would cross the network in clear",
			"put Caddy in front (docs/INSTALL.md, \"HTTPS in front\") and give its https:// address"}
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return Result{check, Fail, "--front-ca: " + oneLine(err), "give the CA that signed the front's certificate (Caddy's own: <state>/caddy/pki/authorities/local/root.crt)"}
		}
		if !pool.AppendCertsFromPEM(pem) {
			return Result{check, Fail, "--front-ca " + caFile + " holds no PEM certificate", "give the CA's certificate in PEM"}
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	r := probeLoginWith(ctx, check, strings.TrimRight(front, "/"), tr)
	if r.Status == Fail && strings.Contains(r.Detail, "certificate") {
		r.Fix = "the front's certificate does not verify for " + u.Hostname() + ": give its CA with --front-ca, or fix the front's TLS set-up"
	}
	return r
}
