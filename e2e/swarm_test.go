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
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// swarmClass is a class's world on a real three-node swarm: the hub env
// built and pushed to the swarm's registry, prepulled with `spawnd image
// prepull`, a `spawnd serve` process (engine.backend swarm) and a real
// JupyterHub 6 whose servers run on the nodes. Everything ends with the test.
type swarmClass struct {
	t       *testing.T
	ctx     context.Context
	w       *world
	sw      *testenv.Swarm
	mgr     *client.Client
	c       *api.Client
	sp      *spawndProcess
	inst    string
	homes   string // homes_root as the config says it
	tokFile string // the daemon's API token, for the CLI
	// tiny is an env of nothing but the base, built on this machine's
	// one engine before the daemon starts (tinyTag, tinyID), whose lock a
	// build through the daemon on the swarm must reproduce exactly.
	tiny, tinyTag, tinyID, base string
}

// newSwarmClass stands a swarmClass up on 198.19.<net>.0/24; engineExtra is
// more of the config's engine section (e.g. "homes: node").
func newSwarmClass(t *testing.T, net byte, engineExtra string) *swarmClass {
	venv := testenv.HubVenv(t, 6)
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	dir := t.TempDir()
	spec := filepath.Join(dir, "jh6.yaml")
	if err := os.WriteFile(spec, []byte(hubEnvSpec(6)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	built, err := images.Build(ctx, eng, spec, images.Options{CACerts: testenv.HostCACerts(t)})
	if err != nil {
		t.Fatal(err)
	}
	sw := testenv.NewSwarm(t, 3, net)
	sw.Push(t, eng, built.Tag, built.Tag)
	s := &swarmClass{t: t, ctx: ctx, sw: sw, mgr: testenv.Client(sw.Manager(t)), inst: testenv.Instance(t, eng), base: base}
	s.tiny = "tiny" + s.inst
	tinySpec := filepath.Join(dir, s.tiny+".yaml")
	if err := os.WriteFile(tinySpec, []byte("name: "+s.tiny+"\ndescription: built again on the swarm\nbase: "+base+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveImages(eng, labels.Env, s.tiny) })
	tb, err := images.Build(ctx, eng, tinySpec, images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.tinyTag, s.tinyID = tb.Tag, tb.ImageID

	w, tokFile := newProcessWorld(t, eng, venv, dir)
	s.w, s.homes, s.tokFile = w, w.homes, tokFile
	if strings.Contains(engineExtra, "homes: node") {
		// Each node's own disk holds homes_root (root's, 0755) at the same path.
		s.homes = filepath.Join(sw.LocalPath, "homes")
		for _, n := range sw.Nodes {
			if err := os.Mkdir(filepath.Join(n.Local, "homes"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	gw := strings.TrimSuffix(sw.Registry, ":5000") // the host's address on the swarm's bridge
	config := filepath.Join(dir, "spawnd.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`listen: %s
token_file: %s
instance: %s
homes_root: %s
engine: {backend: swarm, host: %q, registry: %q, insecure_registry: true, %s}
network: {name: spawnd-%s, icc: true, egress: {enabled: false}}
start_timeout: 4m
profiles:
  small: {memory: 512m, pids: 256}
envs:
  jh6: {spec: %s}
  %s: {spec: %s}
default_env: jh6
`, w.spawndAddr, tokFile, s.inst, s.homes, sw.Nodes[0].Host, sw.Registry, engineExtra, s.inst, spec, s.tiny, tinySpec)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.c, _ = api.NewClient(w.spawndAddr, w.cfg.Token)
	s.sp = w.newSpawndProcess(config, s.c)
	// The env goes onto every node before the class, as docs/SWARM.md says.
	pp := exec.CommandContext(ctx, s.sp.bin, "image", "prepull", spec, "--engine", sw.Nodes[0].Host, "--registry", sw.Registry, "--insecure-registry")
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
	s.sp.start()
	t.Cleanup(s.sp.kill9)
	// Servers on the nodes reach the hub at the host's bridge address.
	w.startHub(gw)
	t.Cleanup(w.stopHub)
	return s
}

// buildIsNormalized builds the tiny env through the daemon's API on the
// swarm (on the manager's engine, given the lock's base) and checks that
// the image is the one the one-engine build made of the same lock: same
// ID, so normalization ran (without it, the build's timestamps differ).
func (s *swarmClass) buildIsNormalized() {
	t := s.t
	s.sw.LoadImage(t, testenv.Engine(t), s.base)
	if _, err := s.mgr.ImageInspect(s.ctx, s.tinyTag); err == nil {
		t.Fatalf("the manager has %s before the build; the test would prove nothing", s.tinyTag)
	}
	var last api.BuildEvent
	steps := map[string]bool{}
	err := s.c.BuildEnv(s.ctx, s.tiny, false, func(ev api.BuildEvent) error {
		last, steps[ev.Step] = ev, true
		return nil
	})
	if err != nil || !last.Done || last.Error != "" || !last.Built || last.Tag != s.tinyTag {
		t.Fatalf("building %s through the daemon on the swarm: %v, last event %+v", s.tiny, err, last)
	}
	if !steps["normalize"] {
		t.Fatalf("the swarm build reported no normalize step: %v", steps)
	}
	got, err := s.mgr.ImageInspect(s.ctx, s.tinyTag)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != s.tinyID {
		t.Fatalf("same lock, different image: the swarm's build of %s is %s, this machine's one-engine build %s", s.tinyTag, got.ID, s.tinyID)
	}
	t.Logf("the swarm's build of %s is the one-engine image %s", s.tinyTag, got.ID)
}

// cli runs the spawnd CLI against the daemon and returns its output
// (stdout and stderr) and error.
func (s *swarmClass) cli(args ...string) (string, error) {
	args = append(args, "--addr", s.w.spawndAddr, "--token-file", s.tokFile)
	out, err := exec.CommandContext(s.ctx, s.sp.bin, args...).CombinedOutput()
	return string(out), err
}

// start asks the hub to start each user's server, all at once.
func (s *swarmClass) start(us []string) {
	var wg sync.WaitGroup
	for _, u := range us {
		wg.Add(1)
		go func() { defer wg.Done(); s.w.hubAPI("POST", "/users/"+u+"/server", nil, nil) }()
	}
	wg.Wait()
}

// ready waits until every one of us is ready in the hub and answers
// through the proxy; a start the hub gave up on is not asked again.
func (s *swarmClass) ready(what string, us []string) {
	t, w := s.t, s.w
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
func (s *swarmClass) nodeOf() map[string]int {
	t := s.t
	t.Helper()
	f := client.Filters{}
	f.Add("label", labels.Instance+"="+s.inst)
	svcs, err := s.mgr.ServiceList(s.ctx, client.ServiceListOptions{Filters: f})
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
	tasks, err := s.mgr.TaskList(s.ctx, client.TaskListOptions{Filters: tf})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, tk := range tasks.Items {
		for i, node := range s.sw.Nodes {
			if node.ID == tk.NodeID && tk.Status.State == swarm.TaskStateRunning {
				out[userOf[tk.ServiceID]] = i
			}
		}
	}
	return out
}

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
	s := newSwarmClass(t, 44, "")
	s.buildIsNormalized()
	w, sw, c, ctx, homes := s.w, s.sw, s.c, s.ctx, s.homes
	start, ready, nodeOf := s.start, s.ready, s.nodeOf
	users := classUsers("sw", n)
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
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
	s.sp.kill9()
	s.sp.start()
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

// classUsers is n user names: prefix00, prefix01, …
func classUsers(prefix string, n int) []string {
	var us []string
	for i := range n {
		us = append(us, fmt.Sprintf("%s%02d", prefix, i))
	}
	return us
}
