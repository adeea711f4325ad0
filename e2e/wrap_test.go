package e2e

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestWrapSpawnerProfiles: SpawndSpawner as one profile of wrapspawner's
// ProfilesSpawner (1.0.1 from PyPI) on JupyterHub 5, with the settings
// docs/HUB.md documents and no code of the admin's (issue #31). A person
// logs in, picks the spawnd profile on the hub's form, and gets spawnd's
// "large" profile through the hub and its proxy; a person whose groups do
// not allow that profile is refused by spawnd and gets no container.
func TestWrapSpawnerProfiles(t *testing.T) {
	testenv.Full(t, "a real engine and JupyterHub")
	venv := testenv.HubVenv(t, 5)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	w := newLockedWorld(t, eng, hubEnvSpec(5), nil, venv, func(c *daemon.Config) {
		c.Profiles = map[string]spawnd.ProfileConfig{"default": {Memory: "512m", CPUs: 1}, "large": {Memory: "768m", CPUs: 1}}
		c.DefaultProfile = "default"
		c.Teams["wrapped"] = spawnd.TeamConfig{Groups: []string{"wrapped"}, Profiles: []string{"large"}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// docs/HUB.md's set-up: the wrapper owns user_options["profile"]; each
	// of its profiles names spawnd's env and profile with the spawner's own
	// settings.
	w.extraHubConfig = `
c.JupyterHub.spawner_class = "wrapspawner.ProfilesSpawner"
c.ProfilesSpawner.profiles = [
    ("Team env, large", "team", "spawnd_spawner.SpawndSpawner",
     {"profile_option": "", "env_option": "", "default_profile": "large"}),
    ("Something else", "other", "jupyterhub.spawner.LocalProcessSpawner", {}),
]
c.JupyterHub.load_groups = {"physics": ["alice"], "wrapped": ["carol"]}
c.Authenticator.allow_all = True
`
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()
	base := fmt.Sprintf("http://127.0.0.1:%d", w.proxyPort)

	// spawnForm logs user in, reads the hub's form and posts the wrapper's
	// "team" profile, as a browser does.
	spawnForm := func(user string) {
		t.Helper()
		hc := hubLogin(t, base, user, "any", nil)
		if hc == nil {
			t.Fatalf("%s was not logged in:\n%s", user, w.logTail())
		}
		resp, err := hc.Get(base + "/hub/spawn")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{`name="profile"`, "Team env, large", "Something else"} {
			if !strings.Contains(string(page), want) {
				t.Fatalf("%s's spawn form has no %q:\n%.2000s", user, want, page)
			}
		}
		xsrf := ""
		hubURL, _ := url.Parse(base + "/hub/")
		for _, ck := range hc.Jar.Cookies(hubURL) {
			if ck.Name == "_xsrf" {
				xsrf = ck.Value
			}
		}
		resp, err = hc.PostForm(base+"/hub/spawn", url.Values{"profile": {"team"}, "_xsrf": {xsrf}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			t.Fatalf("%s posting the spawn form: %d\n%s", user, resp.StatusCode, w.logTail())
		}
	}

	spawnForm("carol")
	w.waitReady("carol", "")
	srv, err := c.Status(ctx, "carol", "")
	if err != nil || srv.State != api.StateRunning || srv.Profile != "large" {
		t.Fatalf("spawnd's view of carol's server: %+v %v; want running on the profile large", srv, err)
	}
	ins, err := testenv.Client(eng).ContainerInspect(ctx, srv.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ins.Container.HostConfig.Memory; got != 768<<20 {
		t.Fatalf("carol's container has a memory limit of %d; want the large profile's 768 MiB", got)
	}
	if code := w.serverAPI("carol", "", w.userToken("carol"), "GET", "", nil, nil); code != 200 {
		t.Fatalf("GET /user/carol/api through the proxy: %d\n%s", code, w.logTail())
	}

	// dave is not in the group the large profile belongs to: spawnd refuses
	// it (the names are still checked against the user's groups), and
	// nothing is started.
	spawnForm("dave")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var u struct {
			Pending *string `json:"pending"`
			Server  *string `json:"server"`
		}
		w.hubAPI("GET", "/users/dave", nil, &u)
		if u.Pending == nil && u.Server == nil && strings.Contains(w.logLinesOf("dave"), `profile "large" is not available to this user's groups`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dave's refused spawn did not end: %+v\n%s", u, w.logLinesOf("dave"))
		}
		time.Sleep(250 * time.Millisecond)
	}
	if s, err := c.Status(ctx, "dave", ""); err == nil && s.ContainerID != "" {
		t.Fatalf("dave's refused start made a container: %+v", s)
	}

	if code := w.hubAPI("DELETE", "/users/carol/server", nil, nil); code != 204 && code != 202 {
		t.Fatalf("stop carol: %d", code)
	}
	w.waitStopped("carol", "")
}
