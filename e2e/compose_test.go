package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/docker"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestComposeStack walks the documented HTTPS path (SPAWND_HTTPS=1
// scripts/compose-up) on a copy of the tree, so the script can never change
// the tree under test, with the local engine and locally built images:
//
//   - asked for HTTPS with the shared-password login, compose-up refuses
//     before anything starts, and Caddy's image refuses to front it;
//   - with the team spec changed under its lock, compose-up refuses (naming
//     --relock) and leaves the lock as it was;
//   - the stack comes up with Caddy in front (its own CA) and the native
//     login, and is reached from a network namespace of the test's own, a
//     machine elsewhere on the network: the admin logs in and sees
//     /hub/admin; a person who signs up is kept out until the admin
//     authorises them, then logs in and gets JupyterLab, all over HTTPS
//     through Caddy; a client without Caddy's CA is refused the handshake.
func TestComposeStack(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if err := exec.Command("docker", "compose", "version").Run(); err != nil {
			ci.Skip(t, "no docker-compose (apt-get install docker-compose)")
		}
	}
	eng := testenv.Engine(t)
	tree := testenv.CopyRepo(t)
	project := "spawnde2e" + randHex(3)
	state := filepath.Join(t.TempDir(), "state")
	const domain = "hub.example.test"
	hubPort, httpsPort := freePort(t), freePort(t)
	env := append(os.Environ(),
		"SPAWND_HTTPS=1", "SPAWND_TLS=internal", "SPAWND_HUB_DOMAIN="+domain,
		fmt.Sprintf("SPAWND_HTTPS_PORT=%d", httpsPort), fmt.Sprintf("SPAWND_HTTP_PORT=%d", freePort(t)),
		"SPAWND_STATE="+state, "COMPOSE_PROJECT_NAME="+project,
		fmt.Sprintf("SPAWND_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_HUB_PORT=%d", hubPort),
		fmt.Sprintf("SPAWND_HUB_API_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_PROXY_API_PORT=%d", freePort(t)))
	composeUp := func(extraEnv []string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(tree, "scripts", "compose-up"), args...)
		cmd.Env = append(append([]string{}, env...), extraEnv...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		_, _ = composeUp(nil, "down")
		testenv.RemoveInstance(eng, project)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = testenv.Client(eng).NetworkRemove(ctx, project+"-users", client.NetworkRemoveOptions{})
	})

	// The shared password behind HTTPS: refused before anything starts.
	out, err := composeUp([]string{"SPAWND_HUB_AUTH=dummy"})
	if err == nil || !strings.Contains(out, "refusing SPAWND_HUB_AUTH=dummy") {
		t.Fatalf("compose-up with HTTPS and the dummy login: %v, want a refusal naming it:\n%s", err, out)
	}
	if n := projectContainers(t, eng, project); n != 0 {
		t.Fatalf("the refused compose-up left %d containers of %s", n, project)
	}

	// A spec changed under its lock: refused, the lock untouched.
	specPath, lockPath := filepath.Join(tree, "envs", "team.yaml"), filepath.Join(tree, "envs", "team.lock.json")
	spec, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.ReadFile(lockPath)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(spec), "description: Team", "description: Changed team", 1)
	if changed == string(spec) {
		t.Fatal("envs/team.yaml has no description line to change")
	}
	if err := os.WriteFile(specPath, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = composeUp(nil)
	if err == nil || !strings.Contains(out, "--relock") {
		t.Fatalf("compose-up with the spec changed under its lock: %v, want a refusal naming --relock:\n%s", err, out)
	}
	if after, _ := os.ReadFile(lockPath); string(after) != string(lock) {
		t.Fatal("compose-up rewrote envs/team.lock.json without --relock")
	}
	if n := projectContainers(t, eng, project); n != 0 {
		t.Fatalf("the refused compose-up left %d containers of %s", n, project)
	}
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		t.Fatal(err)
	}

	if out, err := composeUp(nil); err != nil {
		t.Fatalf("compose-up: %v\n%s", err, out)
	}
	waitHealthy(t, eng, project, []string{"spawnd", "hub", "caddy"})
	caddyRefusesTheSharedLogin(t)

	// A machine elsewhere on the network: a namespace of the test's own, on
	// 198.18.128-255.x (the egress test has the lower half), dialling this
	// host's end of its link. Whatever host name the client asks for, it
	// reaches Caddy's port on this host.
	var r [1]byte
	_, _ = rand.Read(r[:])
	laptop := testenv.NewStandIn(t, 0x80|r[0], 0)
	caFile := filepath.Join(state, "caddy", "caddy", "pki", "authorities", "local", "root.crt")
	front := fmt.Sprintf("https://%s:%d", domain, httpsPort)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return laptop.DialContext(ctx, network, net.JoinHostPort(laptop.HostIP.String(), strconv.Itoa(httpsPort)))
	}
	tr := checkHTTPS(t, front, caFile, dial)

	adminPassword, err := os.ReadFile(filepath.Join(state, "hub", "admin-password"))
	if err != nil {
		t.Fatal(err)
	}
	admin := hubLogin(t, front, "admin", strings.TrimSpace(string(adminPassword)), tr)
	if admin == nil {
		t.Fatal("the admin's password was refused through Caddy")
	}
	if code, _ := browse(t, admin, front+"/hub/admin"); code != 200 {
		t.Fatalf("/hub/admin for the admin through Caddy: %d", code)
	}
	if hubLogin(t, front, "admin", "a-guessed-password", tr) != nil {
		t.Fatal("a guessed password logged in as admin")
	}

	const person, password = "dana", "danas-own-long-password"
	signUp(t, front, person, password, tr)
	if hubLogin(t, front, person, password, tr) != nil {
		t.Fatal("a person who signed up logged in before the admin authorised them")
	}
	if code, body := browse(t, admin, front+"/hub/authorize"); code != 200 || !strings.Contains(body, person) {
		t.Fatalf("/hub/authorize: %d, %s not listed", code, person)
	}
	if code, _ := browse(t, admin, front+"/hub/authorize/"+person); code != 200 {
		t.Fatalf("authorising %s: %d", person, code)
	}
	loginAndSpawn(t, front, person, password, tr)
	if out, err := composeUp(nil, "down"); err != nil {
		t.Fatalf("compose-up down: %v\n%s", err, out)
	}
}

// projectContainers counts the containers of a compose project, running or
// not.
func projectContainers(t *testing.T, eng *docker.Engine, project string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := client.Filters{}
	f.Add("label", "com.docker.compose.project="+project)
	list, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatalf("listing %s's containers: %v", project, err)
	}
	return len(list.Items)
}

// caddyRefusesTheSharedLogin runs the Caddy image as docker-compose would
// with the dummy login (someone running `docker-compose --profile https up`
// by hand): it must refuse to start, naming the fix.
func caddyRefusesTheSharedLogin(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "run", "--rm", "--label", labels.Test+"=1",
		"-e", "SPAWND_HUB_AUTH=dummy", "spawnd/caddy:local").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 78 || !strings.Contains(string(out), "refusing to start") {
		t.Fatalf("the Caddy image with SPAWND_HUB_AUTH=dummy: %v, want exit 78 and a refusal:\n%s", err, out)
	}
}

// signUp posts the native login's sign-up form as a person would.
func signUp(t *testing.T, base, user, password string, tr http.RoundTripper) {
	t.Helper()
	hc, xsrf := hubSession(t, base, "/hub/signup", tr)
	resp, err := hc.PostForm(base+"/hub/signup", url.Values{"username": {user}, "signup_password": {password},
		"signup_password_confirmation": {password}, "_xsrf": {xsrf}})
	if err != nil {
		t.Fatalf("POST /hub/signup: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("signing up %s: %d\n%.500s", user, resp.StatusCode, body)
	}
}

// browse GETs a URL with a logged-in client and returns the status and body.
func browse(t *testing.T, hc *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHealthy waits until each service of the compose project has a
// container whose healthcheck says healthy: the checks in the compose file
// run and pass against the real stack.
func waitHealthy(t *testing.T, eng *docker.Engine, project string, services []string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for _, svc := range services {
		for {
			f := client.Filters{}
			f.Add("label", "com.docker.compose.project="+project)
			f.Add("label", "com.docker.compose.service="+svc)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			list, err := testenv.Client(eng).ContainerList(ctx, client.ContainerListOptions{Filters: f})
			status := "no container"
			if err == nil && len(list.Items) == 1 {
				ins, ierr := testenv.Client(eng).ContainerInspect(ctx, list.Items[0].ID, client.ContainerInspectOptions{})
				switch {
				case ierr != nil:
					status = ierr.Error()
				case ins.Container.State.Health == nil:
					status = "no healthcheck"
				default:
					status = string(ins.Container.State.Health.Status)
				}
			}
			cancel()
			if status == "healthy" {
				break
			}
			if status == "no healthcheck" || time.Now().After(deadline) {
				t.Fatalf("compose service %s: %s; want healthy", svc, status)
			}
			time.Sleep(time.Second)
		}
	}
}

// loginAndSpawn logs in through the hub's login form as a person would
// (after a wrong password is refused), asks for a server, and waits until
// the user's URL lands in JupyterLab and the contents API answers, all
// through the proxy.
func loginAndSpawn(t *testing.T, base, user, password string, tr http.RoundTripper) {
	t.Helper()
	if hubLogin(t, base, user, password+"-wrong", tr) != nil {
		t.Fatal("a wrong password logged in")
	}
	hc := hubLogin(t, base, user, password, tr)
	if hc == nil {
		t.Fatal("the right password was refused")
	}
	get := func(path string) (int, string, string) {
		resp, err := hc.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Request.URL.Path, string(b)
	}
	get("/hub/spawn")
	deadline := time.Now().Add(180 * time.Second)
	for {
		code, path, body := get("/user/" + user + "/")
		if code == 200 && path == "/user/"+user+"/lab" && strings.Contains(body, "<title>JupyterLab</title>") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's URL never landed in JupyterLab: %d at %s", user, code, path)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code, _, _ := get("/user/" + user + "/api/contents"); code != 200 {
		t.Fatalf("contents API through the proxy: %d", code)
	}
}

// hubSession opens a page of the hub (its login or sign-up form) in a new
// browser-like client (a cookie jar; tr, when not nil, carries its
// connections) and returns the client and the page's _xsrf token.
func hubSession(t *testing.T, base, page string, tr http.RoundTripper) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 90 * time.Second, Transport: tr}
	resp, err := hc.Get(base + page)
	if err != nil {
		t.Fatalf("GET %s: %v", page, err)
	}
	resp.Body.Close()
	// JupyterHub 4+ scopes its cookies to /hub/.
	hubURL, _ := url.Parse(base + "/hub/")
	for _, c := range jar.Cookies(hubURL) {
		if c.Name == "_xsrf" {
			return hc, c.Value
		}
	}
	return hc, ""
}

// hubLogin posts the hub's login form; it returns a client holding the
// session when the hub logged the user in, nil when it refused.
func hubLogin(t *testing.T, base, user, password string, tr http.RoundTripper) *http.Client {
	t.Helper()
	hc, xsrf := hubSession(t, base, "/hub/login", tr)
	hubURL, _ := url.Parse(base + "/hub/")
	resp, err := hc.PostForm(base+"/hub/login", url.Values{"username": {user}, "password": {password}, "_xsrf": {xsrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range hc.Jar.Cookies(hubURL) {
		if c.Name == "jupyterhub-hub-login" {
			return hc
		}
	}
	return nil
}

// checkHTTPS fetches the hub's login page through Caddy with connections
// from dial, trusting only Caddy's own CA (caFile), and returns that
// transport; without the CA the handshake must fail.
func checkHTTPS(t *testing.T, base, caFile string, dial func(context.Context, string, string) (net.Conn, error)) http.RoundTripper {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("Caddy's root certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	tr := &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool}}
	trusting := &http.Client{Timeout: 30 * time.Second, Transport: tr}
	resp, err := trusting.Get(base + "/hub/login")
	if err != nil {
		t.Fatalf("GET %s/hub/login over HTTPS with Caddy's CA: %v", base, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || !strings.Contains(string(body), `name="password"`) {
		t.Fatalf("the login page over HTTPS: %d, TLS %v:\n%.500s", resp.StatusCode, resp.TLS != nil, body)
	}
	t.Logf("login page over HTTPS: %s, certificate for %v from %q", resp.TLS.ServerName, resp.TLS.PeerCertificates[0].DNSNames, resp.TLS.PeerCertificates[0].Issuer.CommonName)
	strict := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}}
	if resp, err := strict.Get(base + "/hub/login"); err == nil {
		resp.Body.Close()
		t.Fatal("a client without Caddy's CA trusted the certificate")
	}
	return tr
}
