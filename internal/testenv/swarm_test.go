package testenv_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/testenv"
)

// TestSwarmOfThreeNodes: the harness makes a real three-node swarm (one
// manager, two workers, each a dockerd in its own network namespace): a
// global service runs one task on every node, and a task on one node
// reaches a task on another over an attachable overlay network; each node
// has its own host name and its own disk at LocalPath.
func TestSwarmOfThreeNodes(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	sw := testenv.NewSwarm(t, 3, 41)
	t.Logf("swarm: %s", sw)
	sw.LoadImage(t, eng, base)
	mgr := testenv.Client(sw.Manager(t))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	test := map[string]string{"io.spawnd.test": "swarm"}
	if _, err := mgr.NetworkCreate(ctx, "spawnd-test-overlay", client.NetworkCreateOptions{Driver: "overlay", Attachable: true, Labels: test}); err != nil {
		t.Fatal(err)
	}
	svc, err := mgr.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "spawnd-test-httpd", Labels: test},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: base, Labels: test, Hostname: "{{.Node.Hostname}}",
				Command: []string{"/bin/busybox", "sh", "-c", "hostname > /local/seen && exec /bin/busybox httpd -f -p 8080 -h /etc"},
				Mounts: []mount.Mount{{Type: mount.TypeBind, Source: "/bin/busybox", Target: "/bin/busybox", ReadOnly: true},
					{Type: mount.TypeBind, Source: sw.LocalPath, Target: "/local"}}},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: "spawnd-test-overlay"}},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{Global: &swarm.GlobalService{}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// One running task per node, each with its overlay address.
	var tasks []swarm.Task
	deadline := time.Now().Add(3 * time.Minute)
	for {
		f := client.Filters{}
		f.Add("service", svc.ID)
		f.Add("desired-state", "running")
		res, err := mgr.TaskList(ctx, client.TaskListOptions{Filters: f})
		if err != nil {
			t.Fatal(err)
		}
		tasks = tasks[:0]
		for _, tk := range res.Items {
			if tk.Status.State == swarm.TaskStateRunning {
				tasks = append(tasks, tk)
			}
		}
		if len(tasks) == 3 {
			break
		}
		if time.Now().After(deadline) {
			var states []string
			for _, tk := range res.Items {
				states = append(states, string(tk.Status.State)+": "+tk.Status.Err)
			}
			t.Fatalf("%d of 3 tasks running after 3 min: %v", len(tasks), states)
		}
		time.Sleep(250 * time.Millisecond)
	}
	nodes := map[string]bool{}
	addr := map[string]string{} // node ID -> overlay address of its task
	containerOf := map[string]string{}
	for _, tk := range tasks {
		nodes[tk.NodeID] = true
		containerOf[tk.NodeID] = tk.Status.ContainerStatus.ContainerID
		for _, na := range tk.NetworksAttachments {
			if na.Network.Spec.Name == "spawnd-test-overlay" && len(na.Addresses) > 0 {
				addr[tk.NodeID] = na.Addresses[0].Addr().String()
			}
		}
	}
	if len(nodes) != 3 {
		t.Fatalf("tasks on %d distinct nodes, want 3", len(nodes))
	}
	// From the task on node 2 to the task on node 1, across the overlay.
	from, to := sw.Nodes[2].ID, sw.Nodes[1].ID
	if addr[to] == "" || containerOf[from] == "" {
		t.Fatalf("no overlay address or container: %v %v", addr, containerOf)
	}
	var out string
	deadline = time.Now().Add(time.Minute)
	for {
		code, o, err := testenv.Exec(ctx, sw.Node(t, 2), containerOf[from], []string{"bash", "-c",
			// busybox's wget crashes in a glibc image; bash's /dev/tcp does not.
			`exec 3<>/dev/tcp/` + addr[to] + `/8080 && printf 'GET /hostname HTTP/1.0\r\n\r\n' >&3 && timeout 3 cat <&3`})
		out = o
		if err == nil && code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2's task never reached node 1's task at %s over the overlay: exit %d %v %s", addr[to], code, err, o)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The answer is /etc/hostname of node 1's task: its node's host name.
	if !strings.Contains(out, "200 OK") || lastLine(out) != sw.Nodes[1].Hostname {
		t.Fatalf("answer across the overlay: %q, want HTTP 200 with %s (node 1's task)", out, sw.Nodes[1].Hostname)
	}
	t.Logf("node 2 -> node 1 (%s) over the overlay: %s", addr[to], lastLine(out))

	// Each task wrote its node's name at LocalPath: each lands on its own
	// node's disk, and the swarm lists the nodes by those names.
	list, err := mgr.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, nd := range list.Items {
		listed[nd.ID] = nd.Description.Hostname
	}
	for i, n := range sw.Nodes {
		b, err := os.ReadFile(filepath.Join(n.Local, "seen"))
		if err != nil || strings.TrimSpace(string(b)) != n.Hostname || listed[n.ID] != n.Hostname {
			t.Errorf("node %d: its disk holds %q (%v), the swarm lists it as %q; want %q for both", i, b, err, listed[n.ID], n.Hostname)
		}
	}
	if _, err := os.Stat(filepath.Join(sw.LocalPath, "seen")); err == nil {
		t.Errorf("a node's write at LocalPath reached this machine's own directory")
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}
