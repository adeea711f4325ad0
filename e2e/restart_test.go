package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestClassStartSurvivesRestarts starts a class through a real JupyterHub 6
// and restarts first the hub, then spawnd, while the starts are in flight.
// Afterwards every user gets a ready server through the proxy with at most
// a second request (as a person would click "start" again), each user has
// exactly one container, every container is one the hub knows, and homes
// keep their files.
func TestClassStartSurvivesRestarts(t *testing.T) {
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	spec := filepath.Join(dir, "jh6.yaml")
	if err := os.WriteFile(spec, []byte(hubEnvSpec(6)), 0o644); err != nil {
		t.Fatal(err)
	}
	parsed, err := envs.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if _, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)}); err != nil {
		t.Fatal(err)
	}
	homes := filepath.Join(dir, "homes")
	if err := os.MkdirAll(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	inst := testenv.Instance(t, eng)
	w := &world{t: t, eng: eng, dir: dir, hubLog: logf, adminToken: randHex(16), venv: venv,
		hubPort: freePort(t), proxyPort: freePort(t), spawndAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	w.cfg = daemon.Config{Token: randHex(16), Config: spawnd.Config{
		Instance: inst, HomesRoot: homes, Network: spawnd.NetworkConfig{Name: "spawnd-" + inst},
		Envs: map[string]spawnd.EnvConfig{parsed.Name: {Spec: spec}}, StartTimeout: 3 * time.Minute,
	}}
	w.startDaemon()
	defer w.stopDaemon()
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	opts, err := c.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.startHub(opts.Network.Gateway)
	defer w.stopHub()

	const n = 12
	var users []string
	for i := range n {
		users = append(users, fmt.Sprintf("s%02d", i))
	}
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	startAll := func() {
		var wg sync.WaitGroup
		for _, u := range users {
			wg.Add(1)
			go func() { defer wg.Done(); w.hubAPI("POST", "/users/"+u+"/server", nil, nil) }()
		}
		wg.Wait()
	}
	// settle asks again for every server the hub does not have (at most
	// once more each), then waits until all are ready and answer.
	settle := func(what string) {
		t.Helper()
		for _, u := range users {
			var hu hubUser
			w.hubAPI("GET", "/users/"+u, nil, &hu)
			if _, ok := hu.Servers[""]; !ok {
				w.hubAPI("POST", "/users/"+u+"/server", nil, nil)
			}
		}
		for _, u := range users {
			w.waitReady(u, "")
			tok := w.userToken(u)
			if code := w.serverAPI(u, "", tok, "GET", "", nil, nil); code != 200 {
				t.Fatalf("%s: %s's server does not answer through the proxy: %d", what, u, code)
			}
		}
		servers, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		per := map[string]int{}
		for _, s := range servers {
			if s.State == api.StateRunning {
				per[s.User]++
			}
		}
		for _, u := range users {
			if per[u] != 1 {
				t.Fatalf("%s: %s has %d running servers in spawnd, want 1 (%+v)", what, u, per[u], servers)
			}
		}
		if len(per) != n {
			t.Fatalf("%s: spawnd runs servers of %d users, want %d", what, len(per), n)
		}
	}

	// 1. The hub restarts while the class starts.
	startAll()
	time.Sleep(2 * time.Second)
	w.stopHub()
	w.startHub(opts.Network.Gateway)
	settle("after a hub restart during the class start")

	// A file in every home, to check nothing is lost below.
	for _, u := range users {
		tok := w.userToken(u)
		note := map[string]any{"type": "file", "format": "text", "content": "mine: " + u + "\n"}
		if code := w.serverAPI(u, "", tok, "PUT", "/contents/note.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("writing %s's file: %d", u, code)
		}
	}

	// 2. spawnd restarts while the class starts.
	var wg sync.WaitGroup
	for _, u := range users {
		wg.Add(1)
		go func() { defer wg.Done(); w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil) }()
	}
	wg.Wait()
	for _, u := range users {
		w.waitStopped(u, "")
	}
	startAll()
	time.Sleep(2 * time.Second)
	w.stopDaemon()
	time.Sleep(time.Second)
	w.startDaemon()
	settle("after a spawnd restart during the class start")

	for _, u := range users {
		b, err := os.ReadFile(filepath.Join(homes, spawnd.Escape(u), "note.txt"))
		if err != nil || string(b) != "mine: "+u+"\n" {
			t.Fatalf("%s's home lost its file: %q %v", u, b, err)
		}
	}
}
