package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestSwarmNodePinnedHomes is engine.homes: node on a real three-node swarm
// whose nodes each have a disk of their own (testenv.Swarm.LocalPath),
// through a real JupyterHub 6 and `spawnd serve`: six users start at once
// through the hub; each home is made on the node its server runs on, owned
// by the env's user, and on no other node. A file written through the hub's
// proxy is on that node's disk. `spawnd home move` refuses a running
// server, an unknown node, and a target that already holds a home of that
// name, changing nothing; a stopped user's home moves byte-identical (tree
// checksum), the old copy stays renamed, and the next start through the hub
// runs on the new node with the file. A home whose node is down fails its
// start with that reason. `spawnd home delete` removes it on its node.
func TestSwarmNodePinnedHomes(t *testing.T) {
	const n = 6
	s := newSwarmClass(t, 45, "homes: node")
	w, sw := s.w, s.sw
	users := classUsers("nh", n)
	if code := w.hubAPI("POST", "/users", map[string]any{"usernames": users}, nil); code != 201 {
		t.Fatalf("creating users: %d", code)
	}
	s.start(users)
	s.ready("the class start", users)
	home := func(i int, u string) string { return filepath.Join(sw.Nodes[i].Local, "homes", spawnd.Escape(u)) }
	onNodes := func(u string) []int {
		var on []int
		for i := range sw.Nodes {
			if _, err := os.Lstat(home(i, u)); err == nil {
				on = append(on, i)
			}
		}
		return on
	}
	placed := s.nodeOf()
	used := map[int]bool{}
	for _, u := range users {
		i, ok := placed[u]
		if !ok {
			t.Fatalf("%s's server runs on no node: %v", u, placed)
		}
		used[i] = true
		if on := onNodes(u); !slices.Equal(on, []int{i}) {
			t.Fatalf("%s's server runs on node %d; its home is on nodes %v, want only there", u, i, on)
		}
		fi, err := os.Stat(home(i, u))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s's home on node %d: uid %d mode %v; want the env's user (1000) and 0700", u, i, st.Uid, fi.Mode().Perm())
		}
		note := map[string]any{"type": "file", "format": "text", "content": "mine: " + u + "\n"}
		if code := w.serverAPI(u, "", w.userToken(u), "PUT", "/contents/note.txt", note, nil); code != 201 && code != 200 {
			t.Fatalf("writing %s's file: %d", u, code)
		}
		if b, err := os.ReadFile(filepath.Join(home(i, u), "note.txt")); err != nil || string(b) != "mine: "+u+"\n" {
			t.Fatalf("%s's file on node %d's disk: %q %v", u, i, b, err)
		}
	}
	t.Logf("homes made where the servers run: %v", placed)
	if len(used) < 2 {
		t.Errorf("all %d homes landed on one node: %v", n, placed)
	}

	u := users[0]
	from := placed[u]
	to := (from + 1) % len(sw.Nodes)
	// Bad input changes nothing.
	for _, bad := range []struct {
		what string
		args []string
		want string
	}{
		{"a running server", []string{"home", "move", u, "--to", sw.Nodes[to].Hostname}, "stop it"},
	} {
		out, err := s.cli(bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("spawnd home move, %s: %v %q; want an error saying %q", bad.what, err, out, bad.want)
		}
		if on := onNodes(u); !slices.Equal(on, []int{from}) {
			t.Fatalf("after the refused move (%s) %s's home is on nodes %v, want only %d", bad.what, u, on, from)
		}
	}

	// v: a second user, whose home is on a worker if any is (that worker
	// dies at the end).
	v := users[1]
	for _, x := range users[1:] {
		if placed[x] != 0 {
			v = x
			break
		}
	}
	// A stopped user's home moves, byte-identical; the next start follows it.
	for _, x := range []string{u, v} {
		w.hubAPI("DELETE", "/users/"+x+"/server", nil, nil)
		w.waitStopped(x, "")
	}
	if out, err := s.cli("home", "move", u, "--to", "no-such-node"); err == nil || !strings.Contains(out, "no node of the swarm is") {
		t.Errorf("spawnd home move to an unknown node: %v %q; want an error naming the nodes", err, out)
	}
	if on := onNodes(u); !slices.Equal(on, []int{from}) {
		t.Fatalf("after the refused move to an unknown node %s's home is on nodes %v, want only %d", u, on, from)
	}
	// Files of every kind: odd names, a subdirectory, a binary file, a symlink.: odd names, a subdirectory, a symlink.
	sub := filepath.Join(home(from, u), "sub dir")
	if err := os.MkdirAll(sub, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "data.bin"), []byte{0, 1, 2, 255, '\n'}, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub dir/data.bin", filepath.Join(home(from, u), "link")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{sub, filepath.Join(sub, "data.bin")} {
		if err := os.Lchown(p, 1000, 100); err != nil {
			t.Fatal(err)
		}
	}
	before := testenv.TreeSum(t, home(from, u))
	out, err := s.cli("home", "move", u, "--to", sw.Nodes[to].Hostname)
	if err != nil {
		t.Fatalf("spawnd home move %s --to %s: %v\n%s\n%s", u, sw.Nodes[to].Hostname, err, out, w.logTail())
	}
	t.Logf("spawnd home move: %s", strings.TrimSpace(out))
	if !regexp.MustCompile(`from ` + sw.Nodes[from].Hostname + ` to ` + sw.Nodes[to].Hostname + `: [1-9][0-9]* bytes, sha256 [0-9a-f]{64}; the old copy is \.`).MatchString(out) {
		t.Errorf("spawnd home move printed %q; want the two nodes, the size and SHA-256 both ends agreed on, and the old copy's name", out)
	}
	if on := onNodes(u); !slices.Equal(on, []int{to}) {
		t.Fatalf("after the move %s's home is on nodes %v, want only %d", u, on, to)
	}
	if after := testenv.TreeSum(t, home(to, u)); after != before {
		t.Fatalf("the moved home differs: %s before, %s after", before, after)
	}
	old, _ := filepath.Glob(filepath.Join(sw.Nodes[from].Local, "homes", "."+spawnd.Escape(u)+".moved-*"))
	if len(old) != 1 || testenv.TreeSum(t, old[0]) != before {
		t.Errorf("the old copy on node %d: %v; want one, renamed, as it was", from, old)
	}
	s.start([]string{u})
	s.ready("the start after the move", []string{u})
	if got := s.nodeOf()[u]; got != to {
		t.Errorf("after the move %s's server runs on node %d, want %d (where the home is)", u, got, to)
	}
	var file map[string]any
	if code := w.serverAPI(u, "", w.userToken(u), "GET", "/contents/note.txt", nil, &file); code != 200 || file["content"] != "mine: "+u+"\n" {
		t.Errorf("%s's file through the proxy after the move: %d %v", u, code, file["content"])
	}

	// A target that holds a home of that name already: refused, nothing changed.
	vFrom := placed[v]
	vTo := (vFrom + 1) % len(sw.Nodes)
	stray := home(vTo, v)
	if err := os.Mkdir(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	vBefore := testenv.TreeSum(t, home(vFrom, v))
	if out, err := s.cli("home", "move", v, "--to", sw.Nodes[vTo].ID); err == nil || !strings.Contains(out, "already on the target node") {
		t.Errorf("moving %s onto a node that has a home of that name: %v %q; want a refusal", v, err, out)
	}
	if testenv.TreeSum(t, home(vFrom, v)) != vBefore {
		t.Errorf("a refused move changed %s's home", v)
	}
	if err := os.Remove(stray); err != nil {
		t.Errorf("the refused move touched the stray home on node %d: %v", vTo, err)
	}

	// Delete (the explicit admin action) removes it on its node, with its pin.
	w.hubAPI("DELETE", "/users/"+u+"/server", nil, nil)
	w.waitStopped(u, "")
	if out, err := s.cli("home", "delete", u, "--yes"); err != nil {
		t.Fatalf("spawnd home delete: %v %s", err, out)
	}
	if on := onNodes(u); len(on) != 0 {
		t.Errorf("after spawnd home delete %s's home is on nodes %v", u, on)
	}
	f := client.Filters{}
	f.Add("label", "io.spawnd.home.user="+u)
	if pins, err := s.mgr.ConfigList(s.ctx, client.ConfigListOptions{Filters: f}); err != nil || len(pins.Items) != 0 {
		t.Errorf("after the delete, %s's pin: %v %v", u, pins.Items, err)
	}

	// A home on a node that is down: the start says so.
	if vFrom == 0 {
		t.Logf("every home but %s's is on the manager, which stays up: no node dies", u)
	} else {
		sw.Kill(vFrom)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			nd, err := s.mgr.NodeInspect(s.ctx, sw.Nodes[vFrom].ID, client.NodeInspectOptions{})
			if err == nil && nd.Node.Status.State == swarm.NodeStateDown {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d was killed 2 min ago and the manager does not list it down (%v)", vFrom, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		_, err := s.c.Start(s.ctx, v, "", api.StartRequest{})
		if err == nil || !strings.Contains(err.Error(), "is down") || !strings.Contains(err.Error(), "spawnd home move") {
			t.Errorf("starting %s, whose home's node is down: %v; want the reason and the way out", v, err)
		}
	}
}
