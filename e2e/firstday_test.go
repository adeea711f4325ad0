package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/doctor"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// fakeGitHub stands in for github.com's OAuth endpoints and the few REST
// calls oauthenticator makes, on 127.0.0.1 (no outside address is ever
// contacted). Who is "logged in to GitHub" is a cookie on its own host,
// as in a browser.
type fakeGitHub struct {
	srv              *httptest.Server
	clientID, secret string
	orgs             map[string][]string // login → organisations

	mu     sync.Mutex
	codes  map[string]string // one-time code → login
	tokens map[string]string // access token → login
	calls  []string
}

func newFakeGitHub(t *testing.T, clientID, secret string, orgs map[string][]string) *fakeGitHub {
	g := &fakeGitHub{clientID: clientID, secret: secret, orgs: orgs, codes: map[string]string{}, tokens: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", g.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", g.token)
	mux.HandleFunc("GET /api/v3/user", g.user)
	mux.HandleFunc("GET /api/v3/orgs/{org}/members/{login}", g.member)
	g.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.calls = append(g.calls, r.Method+" "+r.URL.Path)
		g.mu.Unlock()
		mux.ServeHTTP(rw, r)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *fakeGitHub) authorize(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != g.clientID {
		http.Error(rw, "unknown client_id", http.StatusBadRequest)
		return
	}
	who, err := r.Cookie("gh_session")
	if err != nil {
		http.Error(rw, "not logged in to the stand-in GitHub", http.StatusUnauthorized)
		return
	}
	code := randHex(8)
	g.mu.Lock()
	g.codes[code] = who.Value
	g.mu.Unlock()
	back, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || back.Host == "" {
		http.Error(rw, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	v := back.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	back.RawQuery = v.Encode()
	http.Redirect(rw, r, back.String(), http.StatusFound)
}

func (g *fakeGitHub) token(rw http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.Form.Get("client_id"), r.Form.Get("client_secret")
	}
	if id != g.clientID || secret != g.secret {
		rw.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(rw, `{"error":"incorrect_client_credentials"}`)
		return
	}
	g.mu.Lock()
	login, ok := g.codes[r.Form.Get("code")]
	delete(g.codes, r.Form.Get("code"))
	tok := "gho_" + randHex(12)
	if ok {
		g.tokens[tok] = login
	}
	g.mu.Unlock()
	rw.Header().Set("Content-Type", "application/json")
	if !ok {
		_, _ = io.WriteString(rw, `{"error":"bad_verification_code"}`)
		return
	}
	_ = json.NewEncoder(rw).Encode(map[string]string{"access_token": tok, "token_type": "bearer", "scope": "read:org"})
}

func (g *fakeGitHub) login(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	_, tok, _ := strings.Cut(h, " ")
	g.mu.Lock()
	defer g.mu.Unlock()
	login, ok := g.tokens[tok]
	return login, ok
}

func (g *fakeGitHub) user(rw http.ResponseWriter, r *http.Request) {
	login, ok := g.login(r)
	if !ok {
		http.Error(rw, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(map[string]any{"login": login, "id": len(login), "name": login, "email": login + "@example.org"})
}

func (g *fakeGitHub) member(rw http.ResponseWriter, r *http.Request) {
	if _, ok := g.login(r); !ok {
		http.Error(rw, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return
	}
	for _, o := range g.orgs[r.PathValue("login")] {
		if o == r.PathValue("org") {
			rw.WriteHeader(http.StatusNoContent)
			return
		}
	}
	http.Error(rw, `{"message":"Not Found"}`, http.StatusNotFound)
}

// githubLogin goes through the hub's GitHub login as a browser would, logged
// in to the stand-in as login. It returns the browser and the last answer.
func githubLogin(t *testing.T, hubBase string, g *fakeGitHub, login string) (*http.Client, int, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	gh, _ := url.Parse(g.srv.URL)
	jar.SetCookies(gh, []*http.Cookie{{Name: "gh_session", Value: login}})
	hc := &http.Client{Jar: jar, Timeout: 60 * time.Second}
	resp, err := hc.Get(hubBase + "/hub/oauth_login?next=")
	if err != nil {
		t.Fatalf("GitHub login of %s: %v", login, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return hc, resp.StatusCode, string(b)
}

func loggedIn(hc *http.Client, hubBase string) bool {
	u, _ := url.Parse(hubBase + "/hub/")
	for _, c := range hc.Jar.Cookies(u) {
		if c.Name == "jupyterhub-hub-login" {
			return true
		}
	}
	return false
}

// TestShippedHubConfig runs deploy/jupyterhub_config.py, as shipped, on a
// real JupyterHub 5 with GitHub logins against a local stand-in for GitHub
// and the idle culler on a short timeout, in front of a real spawnd:
// an organisation member logs in and gets a server; someone outside the
// organisation and a forged or expired OAuth state are refused with a
// message and start nothing; the idle server is culled, its home intact.
func TestShippedHubConfig(t *testing.T) {
	venv := testenv.HubVenv(t, 5)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	w := newWorld(t, eng, hubEnvSpec(5), venv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	clientID, secret := "Iv1."+randHex(8), randHex(20)
	gh := newFakeGitHub(t, clientID, secret, map[string][]string{"alice": {"my-lab"}, "bob": {"my-lab"}, "mallory": {"elsewhere"}})
	files := map[string]string{"gh-id": clientID, "gh-secret": secret}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(w.dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", w.proxyPort)
	w.useShippedConfig(
		"SPAWND_HUB_AUTH=github",
		"GITHUB_CLIENT_ID_FILE="+filepath.Join(w.dir, "gh-id"),
		"GITHUB_CLIENT_SECRET_FILE="+filepath.Join(w.dir, "gh-secret"),
		"GITHUB_CALLBACK_URL="+base+"/hub/oauth_callback",
		"GITHUB_ALLOWED_ORGS=my-lab",
		"GITHUB_ADMIN_USERS=alice",
		"GITHUB_URL="+gh.srv.URL,
		"SPAWND_CULL_IDLE_TIMEOUT=20",
		"SPAWND_CULL_EVERY=5",
	)
	w.startHub("")
	defer w.stopHub()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)

	// spawnd doctor tries the running hub with a made-up login: refused.
	if r := findResult(doctor.Run(ctx, doctor.Input{HubURL: base}), "hub probe"); r.Status != doctor.OK {
		t.Fatalf("doctor's login probe of the GitHub hub: %+v", r)
	}

	// Someone outside the organisation: refused, never created, nothing started.
	mc, code, body := githubLogin(t, base, gh, "mallory")
	if loggedIn(mc, base) || code != http.StatusForbidden {
		t.Fatalf("mallory (not in my-lab) got %d, logged in %v:\n%.500s", code, loggedIn(mc, base), body)
	}
	if code := w.hubAPI("GET", "/users/mallory", nil, nil); code != 404 {
		t.Fatalf("the hub made a user for mallory: %d", code)
	}

	// A forged state, and a state whose cookie has expired (gone): 400, no login.
	for _, tc := range []struct{ name, cookie, state, want string }{
		{"forged state", "keep", "forged", "state mismatch"},
		{"expired state", "drop", "", "state missing"},
	} {
		jar, _ := cookiejar.New(nil)
		stop := &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := stop.Get(base + "/hub/oauth_login?next=")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		to, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || !strings.HasPrefix(to.String(), gh.srv.URL) {
			t.Fatalf("%s: the login did not send the browser to GitHub: %d %q", tc.name, resp.StatusCode, resp.Header.Get("Location"))
		}
		state := to.Query().Get("state")
		if tc.state != "" {
			state = tc.state
		}
		if tc.cookie == "drop" {
			jar, _ = cookiejar.New(nil)
			stop.Jar = jar
		}
		resp, err = stop.Get(base + "/hub/oauth_callback?" + url.Values{"code": {"whatever"}, "state": {state}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(strings.ToLower(string(b)), tc.want) {
			t.Fatalf("%s: %d, want 400 with %q:\n%.800s", tc.name, resp.StatusCode, tc.want, b)
		}
		if loggedIn(stop, base) {
			t.Fatalf("%s logged someone in", tc.name)
		}
	}

	// An admin (allowed as such) and an organisation member (allowed by the
	// stand-in's membership answer) log in; the member gets a server.
	var u struct {
		Admin bool `json:"admin"`
	}
	if ac, code, body := githubLogin(t, base, gh, "alice"); !loggedIn(ac, base) {
		t.Fatalf("alice (admin) was not logged in: %d\n%.800s\nhub log:\n%s", code, body, w.logTail())
	}
	if w.hubAPI("GET", "/users/alice", nil, &u); !u.Admin {
		t.Fatal("GITHUB_ADMIN_USERS=alice did not make alice an admin")
	}
	ac, code, body := githubLogin(t, base, gh, "bob")
	if !loggedIn(ac, base) {
		t.Fatalf("bob (in my-lab) was not logged in: %d\n%.800s\nhub log:\n%s", code, body, w.logTail())
	}
	if w.hubAPI("GET", "/users/bob", nil, &u); u.Admin {
		t.Fatal("bob is an admin")
	}
	gh.mu.Lock()
	asked := strings.Join(gh.calls, ",")
	gh.mu.Unlock()
	if !strings.Contains(asked, "/orgs/my-lab/members/bob") {
		t.Fatalf("the hub let bob in without asking GitHub about my-lab: %s", asked)
	}
	resp, err := ac.Get(base + "/hub/spawn")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	w.waitReady("bob", "")
	srv, err := c.Status(ctx, "bob", "")
	if err != nil || srv.State != api.StateRunning {
		t.Fatalf("spawnd's view of bob's server: %+v %v", srv, err)
	}
	keep := filepath.Join(w.homes, spawnd.Escape("bob"), "keep.txt")
	if err := os.WriteFile(keep, []byte("still here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	servers, _ := c.List(ctx)
	for _, s := range servers {
		if s.User == "mallory" {
			t.Fatalf("a server for mallory: %+v", s)
		}
	}

	// Nobody uses it: the culler stops it within its timeout plus a round or two.
	waitCulled := func() {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			var hu hubUser
			w.hubAPI("GET", "/users/bob", nil, &hu)
			if _, ok := hu.Servers[""]; !ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the idle server was not culled; hub log:\n%s", w.logTail())
			}
			time.Sleep(time.Second)
		}
	}
	bobRuns := func() bool {
		t.Helper()
		f := client.Filters{}
		f.Add("label", labels.Instance+"="+w.cfg.Instance)
		// bob's alone: alice's login took her to a server of her own, which
		// the culler ends on its own schedule (CI once saw hers still up).
		f.Add("label", labels.User+"=bob")
		res, err := testenv.Client(w.eng).ContainerList(ctx, client.ContainerListOptions{Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		return len(res.Items) > 0
	}
	checkHome := func(when string) {
		t.Helper()
		if b, err := os.ReadFile(keep); err != nil || string(b) != "still here\n" {
			t.Fatalf("bob's home %s: %q %v", when, b, err)
		}
	}
	waitCulled()
	if bobRuns() {
		t.Fatal("culled on the hub, but its container still runs")
	}
	checkHome("after culling")
	if hubLog, _ := os.ReadFile(w.hubLog.Name()); !strings.Contains(string(hubLog), "Culling server bob") {
		t.Fatalf("the hub log does not show the culler at work:\n%s", w.logTail())
	}

	// The culler while spawnd is down: the stop fails with a message that
	// says so, nothing is deleted, and the container is stopped once spawnd
	// is back (JupyterHub itself forgets a server whose stop failed).
	resp, err = ac.Get(base + "/hub/spawn")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	w.waitReady("bob", "")
	w.stopDaemon()
	waitCulled()
	hubLog, _ := os.ReadFile(w.hubLog.Name())
	if !strings.Contains(string(hubLog), "not reachable at http://"+w.spawndAddr) || !strings.Contains(string(hubLog), "spawnd will be asked again") {
		t.Fatalf("the failed stop says nothing clear in the hub's log:\n%s", w.logTail())
	}
	if !bobRuns() {
		t.Fatal("bob's container is gone while spawnd was down: who removed it?")
	}
	checkHome("after a failed stop")
	w.startDaemon()
	deadline := time.Now().Add(2 * time.Minute)
	for bobRuns() {
		if time.Now().After(deadline) {
			t.Fatalf("spawnd is back, but the stop the hub could not make never came:\n%s", w.logTail())
		}
		time.Sleep(time.Second)
	}
	checkHome("after the deferred stop")
	gh.mu.Lock()
	t.Logf("stand-in GitHub saw: %v", gh.calls)
	gh.mu.Unlock()
}

func findResult(rs []doctor.Result, check string) doctor.Result {
	for _, r := range rs {
		if r.Check == check {
			return r
		}
	}
	return doctor.Result{Check: check, Status: "absent"}
}
