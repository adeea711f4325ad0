package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd/docker"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestComposeStack brings the docker-compose dev stack up on the local
// engine (images built locally) with Caddy in front (its own CA), fetches
// the login page over HTTPS with that CA (and fails without it), logs in
// through the proxy as a person would, spawns a server, reaches it, and
// tears everything down.
func TestComposeStack(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if err := exec.Command("docker", "compose", "version").Run(); err != nil {
			ci.Skip(t, "no docker-compose (apt-get install docker-compose)")
		}
	}
	eng := testenv.Engine(t)
	root := testenv.RepoRoot(t)
	project := "spawnde2e" + randHex(3)
	state := filepath.Join(t.TempDir(), "state")
	hubPort, httpsPort := freePort(t), freePort(t)
	env := append(os.Environ(),
		"SPAWND_HTTPS=1", "SPAWND_TLS=internal", "SPAWND_HUB_DOMAIN=localhost",
		fmt.Sprintf("SPAWND_HTTPS_PORT=%d", httpsPort), fmt.Sprintf("SPAWND_HTTP_PORT=%d", freePort(t)),
		"SPAWND_STATE="+state, "COMPOSE_PROJECT_NAME="+project,
		fmt.Sprintf("SPAWND_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_HUB_PORT=%d", hubPort),
		fmt.Sprintf("SPAWND_HUB_API_PORT=%d", freePort(t)), fmt.Sprintf("SPAWND_PROXY_API_PORT=%d", freePort(t)))
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "scripts", "compose-up"), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("compose-up %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() {
		cmd := exec.Command(filepath.Join(root, "scripts", "compose-up"), "down")
		cmd.Env = env
		_ = cmd.Run()
		testenv.RemoveInstance(eng, project)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = testenv.Client(eng).NetworkRemove(ctx, project+"-users", client.NetworkRemoveOptions{})
	})
	run()
	waitHealthy(t, eng, project, []string{"spawnd", "hub", "caddy"})

	password, err := os.ReadFile(filepath.Join(state, "hub", "password"))
	if err != nil {
		t.Fatal(err)
	}
	checkHTTPS(t, fmt.Sprintf("https://localhost:%d", httpsPort), filepath.Join(state, "caddy", "caddy", "pki", "authorities", "local", "root.crt"))
	loginAndSpawn(t, fmt.Sprintf("http://127.0.0.1:%d", hubPort), "dana", strings.TrimSpace(string(password)))
	run("down")
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
func loginAndSpawn(t *testing.T, base, user, password string) {
	t.Helper()
	if hubLogin(t, base, user, password+"-wrong") != nil {
		t.Fatal("a wrong password logged in")
	}
	hc := hubLogin(t, base, user, password)
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

// hubLogin posts the hub's login form; it returns a client holding the
// session when the hub logged the user in, nil when it refused.
func hubLogin(t *testing.T, base, user, password string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 90 * time.Second}
	resp, err := hc.Get(base + "/hub/login")
	if err != nil {
		t.Fatalf("GET /hub/login: %v", err)
	}
	resp.Body.Close()
	// JupyterHub 4+ scopes its cookies to /hub/.
	hubURL, _ := url.Parse(base + "/hub/")
	xsrf := ""
	for _, c := range jar.Cookies(hubURL) {
		if c.Name == "_xsrf" {
			xsrf = c.Value
		}
	}
	resp, err = hc.PostForm(base+"/hub/login", url.Values{"username": {user}, "password": {password}, "_xsrf": {xsrf}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range jar.Cookies(hubURL) {
		if c.Name == "jupyterhub-hub-login" {
			return hc
		}
	}
	return nil
}

// checkHTTPS fetches the hub's login page through Caddy, trusting only
// Caddy's own CA (caFile); without that CA the handshake must fail.
func checkHTTPS(t *testing.T, base, caFile string) {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatalf("Caddy's root certificate: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(addr) // localhost is 127.0.0.1 here, never ::1
		return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
	}
	trusting := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool}}}
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
}
