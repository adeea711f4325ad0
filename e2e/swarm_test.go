package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// TestSwarmClassThroughJupyterHub is a class on a real three-node swarm
// (testenv.NewSwarm) through a real JupyterHub 6 and a real `spawnd serve`
// process with engine.backend swarm: 30 users start at once through the
// hub's API and each gets a ready server that answers through the hub's
// proxy, spread over the three nodes. Then a worker's dockerd is killed:
// its servers are reported stopped with the reason, the hub sees them
// gone, and starting them again puts them on the live nodes with their
// homes as they were. Last, spawnd is killed (-9) and restarted and adopts
// every service.
func TestSwarmClassThroughJupyterHub(t *testing.T) {
	const n = 30
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	spec := filepath.Join(dir, "jh6.yaml")
	if err := os.WriteFile(spec, []byte(hubEnvSpec(6)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	built, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	if err != nil {
		t.Fatal(err)
	}
	sw := testenv.NewSwarm(t, 3, 44)
	sw.Push(t, eng, built.Tag, built.Tag)
	mgr := testenv.Client(sw.Manager(t))

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
	gw := strings.TrimSuffix(sw.Registry, ":5000") // the host's address on the swarm's bridge
	w := &world{t: t, eng: eng, dir: dir, hubLog: logf, adminToken: randHex(16), venv: venv,
		hubPort: freePort(t), proxyPort: freePort(t), spawndAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	w.cfg = daemon.Config{Token: randHex(16)}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(w.cfg.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "spawnd.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`listen: %s
token_file: %s
instance: %s
homes_root: %s
engine: {backend: swarm, host: %q, registry: %q, insecure_registry: true}
network: {name: spawnd-%s, icc: true, egress: {enabled: false}}
start_timeout: 4m
profiles:
  small: {memory: 512m, pids: 256}
envs:
  jh6: {spec: %s}
`, w.spawndAddr, tokFile, inst, homes, sw.Nodes[0].Host, sw.Registry, inst, spec)), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := api.NewClient(w.spawndAddr, w.cfg.Token)
	sp := w.newSpawndProcess(config, c)
	startProc, kill9 := sp.start, sp.kill9
	// The env goes onto every node before the class, as docs/SWARM.md says.
	pp := exec.CommandContext(ctx, sp.bin, "image", "prepull", spec, "--engine", sw.Nodes[0].Host, "--registry", sw.Registry, "--insecure-registry")
	var ppErr strings.Builder
	pp.Stderr = &ppErr
	ppOut, err := pp.Output()
	if err != nil {
		t.Fatalf("spawnd image prepull: %v\n%s", err, ppErr.String())
	}
	if !strings.Contains(string(ppOut), sw.Registry+"/"+strings.Split(built.Tag, ":")[0]+"@sha256:") ||
		!strings.Contains(ppErr.String(), "(3/3 nodes ready)") {
		t.Fatalf("spawnd image prepull printed %q and\n%s\nwant the reference by digest and three nodes ready", ppOut, ppErr.String())
	}
	t.Logf("prepull:\n%s", ppErr.String())
	startProc()
	defer kill9()
	// Servers on the nodes reach the hub at the host's bridge address.
	w.startHub(gw)
	defer w.stopHub()

	var users []string
	for i := range n {
		users = append(users, fmt.Sprintf("sw%02d", i))
	}
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	start := func(us []string) {
		var wg sync.WaitGroup
		for _, u := range us {
			wg.Add(1)
			go func() { defer wg.Done(); w.hubAPI("POST", "/users/"+u+"/server", nil, nil) }()
		}
		wg.Wait()
	}
	// ready waits until every one of us is ready in the hub and answers
	// through the proxy; a start the hub gave up on is not asked again.
	ready := func(what string, us []string) {
		t.Helper()
		deadline := time.Now().Add(8 * time.Minute)
		left := map[string]bool{}
		for _, u := range us {
			left[u] = true
		}
		for len(left) > 0 {
			for u := range left {
				var hu hubUser
				w.hubAPI("GET", "/users/"+u, nil, &hu)
				if srv, ok := hu.Servers[""]; ok && srv.Ready {
					delete(left, u)
				} else if !ok {
					t.Fatalf("%s: the hub has no server for %s (its start failed):\n%s", what, u, w.logTail())
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d servers not ready after 8 minutes\n%s", what, len(left), len(us), w.logTail())
			}
			time.Sleep(time.Second)
		}
		for _, u := range us {
			if code := w.serverAPI(u, "", w.userToken(u), "GET", "", nil, nil); code != 200 {
				t.Fatalf("%s: %s's server does not answer through the proxy: %d", what, u, code)
			}
		}
	}
	// nodeOf is the node (index) each user's server runs on, from the manager's tasks.
	nodeOf := func() map[string]int {
		t.Helper()
		f := client.Filters{}
		f.Add("label", labels.Instance+"="+inst)
		svcs, err := mgr.ServiceList(ctx, client.ServiceListOptions{Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		userOf := map[string]string{}
		tf := client.Filters{}
		tf.Add("desired-state", "running")
		for _, svc := range svcs.Items {
			userOf[svc.ID] = svc.Spec.Labels[labels.User]
			tf.Add("service", svc.ID)
		}
		tasks, err := mgr.TaskList(ctx, client.TaskListOptions{Filters: tf})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, tk := range tasks.Items {
			for i, node := range sw.Nodes {
				if node.ID == tk.NodeID && tk.Status.State == swarm.TaskStateRunning {
					out[userOf[tk.ServiceID]] = i
				}
			}
		}
		return out
	}

	began := time.Now()
	start(users)
	ready("the class start", users)
	t.Logf("%d servers ready through the hub in %s", n, time.Since(began).Round(time.Second))
	placed := nodeOf()
	per := make([]int, len(sw.Nodes))
	for _, u := range users {
		i, ok := placed[u]
		if !ok {
			t.Fatalf("%s's server runs on no node the manager knows: %v", u, placed)
		}
		per[i]++
	}
	t.Logf("servers per node: %v", per)
	for i, k := range per {
		if k == 0 {
			t.Errorf("node %d runs none of the %d servers: %v", i, n, per)
		}
	}
	for _, u := range users {
		note := map[string]any{"type": "file", "format": "text", "content": "mine: " + u + "\n"}
		if code := w.serverAPI(u, "", w.userToken(u), "PUT", "/contents/note.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("writing %s's file: %d", u, code)
		}
	}

	// A worker dies: its servers end with the reason.
	var lost []string
	for _, u := range users {
		if placed[u] == 2 {
			lost = append(lost, u)
		}
	}
	sw.Kill(2)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		servers, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		down := 0
		for _, s := range servers {
			if placed[s.User] == 2 && s.State != api.StateRunning && strings.Contains(s.Reason, "is down") {
				down++
			}
		}
		if down == len(lost) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("3 min after node 2 died, %d of its %d servers are reported down: %+v", down, len(lost), servers)
		}
		time.Sleep(time.Second)
	}
	t.Logf("node 2 died: its %d servers were reported stopped (node is down)", len(lost))
	// The hub polls the spawner and sees them gone; started again, they run on the live nodes.
	for _, u := range lost {
		w.waitStoppedWithin(u, "", 2*time.Minute)
	}
	start(lost)
	ready("the restart of node 2's servers", lost)
	again := nodeOf()
	for _, u := range lost {
		if again[u] == 2 {
			t.Errorf("%s's server started again on the dead node", u)
		}
		var file map[string]any
		if code := w.serverAPI(u, "", w.userToken(u), "GET", "/contents/note.txt", nil, &file); code != 200 || file["content"] != "mine: "+u+"\n" {
			t.Errorf("%s's home after the move to node %d: %d %v", u, again[u], code, file["content"])
		}
	}

	// spawnd dies and comes back: it adopts every service.
	kill9()
	startProc()
	servers, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	running := map[string]bool{}
	for _, s := range servers {
		if s.State == api.StateRunning {
			running[s.User] = true
		}
	}
	if len(running) != n {
		t.Fatalf("after spawnd's restart it reports %d running servers, want %d: %+v", len(running), n, servers)
	}
	for _, u := range users {
		if _, err := os.Stat(filepath.Join(homes, spawnd.Escape(u), "note.txt")); err != nil {
			t.Errorf("%s's home: %v", u, err)
		}
	}
}
