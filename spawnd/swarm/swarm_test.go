package swarm_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/backendtest"
	"github.com/spawnd/spawnd/spawnd/backends"
	"github.com/spawnd/spawnd/spawnd/docker"
	spawndswarm "github.com/spawnd/spawnd/spawnd/swarm"
)

// TestSwarm runs the backend on a real three-node swarm (testenv.NewSwarm:
// a dockerd per network namespace, Debian's docker-registry on the
// bridge): the backend contract every Runtime keeps, then what only a
// swarm has: servers published on the node that runs them, a task no
// node can take, a node that dies.
func TestSwarm(t *testing.T) {
	eng := testenv.Engine(t)
	busybox := testenv.EnsureBusybox(t, eng)
	sw := testenv.NewSwarm(t, 3, 42)
	image := sw.Push(t, eng, busybox, "spawnd-test/busybox:1")
	sw.LoadImage(t, eng, busybox) // for the manager's builder and store
	mgr := sw.Manager(t)
	inst := testenv.Instance(t, eng)
	lbl := map[string]string{"io.spawnd.instance": inst, testenv.TestLabel: "1"}
	netName := "spawnd-test-" + inst
	opts := spawndswarm.Options{Host: mgr.Host(), Registry: sw.Registry, Insecure: true, PollInterval: 250 * time.Millisecond}
	rt := newSwarm(t, opts)
	if _, err := rt.EnsureNetwork(ctxFor(t, 30*time.Second), backend.NetworkSpec{Name: netName, ICC: true, Labels: lbl}); err != nil {
		t.Fatal(err)
	}

	t.Run("Conformance", func(t *testing.T) {
		backendtest.Run(t, backendtest.Harness{
			New: func(t *testing.T) (backend.Runtime, backend.Runtime) {
				return rt, newSwarm(t, opts)
			},
			Image: image, Port: 8888, Network: netName, Labels: lbl,
			Declares:   swarmDeclared(t, mgr.Host(), sw.Registry),
			Print:      func(lines ...string) []string { return printLines(lines...) },
			LocalImage: busybox,
			Serve:      []string{"httpd", "-f", "-p", "8888"},
			ExitWith:   func(code int) []string { return []string{"sh", "-c", fmt.Sprintf("sleep 1; exit %d", code)} },
			MakeHalf: func(t *testing.T, spec backend.ContainerSpec) string {
				// What a crash leaves: a service whose task was never made.
				zero := uint64(0)
				res, err := testenv.Client(mgr).ServiceCreate(context.Background(), client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
					Annotations:  swarm.Annotations{Name: spec.Name, Labels: spec.Labels},
					TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image, Args: spec.Cmd}},
					Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}},
				}})
				if err != nil {
					t.Fatal(err)
				}
				return res.ID
			},
		})
	})

	t.Run("NotAManager", func(t *testing.T) {
		w := newSwarm(t, spawndswarm.Options{Host: sw.Nodes[1].Host, Registry: sw.Registry, Insecure: true})
		_, err := w.EnsureNetwork(context.Background(), backend.NetworkSpec{Name: netName, ICC: true, Labels: lbl})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "worker, not a manager") {
			t.Fatalf("a worker as engine.host: %v; want an error that says it is not a manager", err)
		}
		_, err = rt.EnsureNetwork(context.Background(), backend.NetworkSpec{Name: netName, ICC: false, Labels: lbl})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "network.icc") {
			t.Fatalf("icc false on an overlay: %v; want an error naming network.icc", err)
		}
	})

	// A server published in host mode answers on its node's address, which
	// is what the spawner hands the hub's proxy; the hardening is in place.
	t.Run("PublishedOnTheNode", func(t *testing.T) {
		spec := serverSpec(t, image, netName, lbl)
		spec.PublishIP = "0.0.0.0"
		var waited []string
		spec.Waiting = func(msg string) { waited = append(waited, msg) }
		c, err := rt.Run(ctxFor(t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), c.ID, 0)
		t.Logf("progress of the start: %q", waited)
		if len(waited) == 0 {
			t.Errorf("Run told the start nothing of what it waited for")
		}
		if c.HostIP == "" || c.HostPort == 0 {
			t.Fatalf("Run = host %q port %d; want the node's address and a published port", c.HostIP, c.HostPort)
		}
		getWithin(t, "http://"+net.JoinHostPort(c.HostIP, strconv.Itoa(c.HostPort))+"/", 30*time.Second)
		node := -1
		for i, n := range sw.Nodes {
			if n.Addr.String() == c.HostIP {
				node = i
			}
		}
		if node < 0 {
			t.Fatalf("HostIP %s is no node's address (%s)", c.HostIP, sw)
		}
		// The hardening, as the kernel sees it in the server's container.
		f := client.Filters{}
		f.Add("service", c.ID)
		tasks, err := testenv.Client(mgr).TaskList(ctxFor(t, 10*time.Second), client.TaskListOptions{Filters: f})
		if err != nil || len(tasks.Items) != 1 || tasks.Items[0].Status.ContainerStatus == nil {
			t.Fatalf("the service's task: %+v, %v", tasks, err)
		}
		code, out, err := testenv.Exec(ctxFor(t, 30*time.Second), sw.Node(t, node), tasks.Items[0].Status.ContainerStatus.ContainerID,
			[]string{"sh", "-c", "grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status; id -u"})
		if err != nil || code != 0 {
			t.Fatalf("exec in the server: %d %v %s", code, err, out)
		}
		if !strings.Contains(out, "CapEff:\t0000000000000000") || !strings.Contains(out, "CapBnd:\t0000000000000000") {
			t.Errorf("capabilities in the server:\n%s\nwant none (all dropped)", out)
		}
		t.Logf("in the server (engine %s):\n%s", engineVersion(t, mgr), out)
	})

	// Servers started at once, several to a node, each answer at the
	// address Run reported, and nobody else's server does: each is on its
	// own port of the range, fixed in its service for IPv4 and IPv6 alike.
	// (With ports the nodes chose, Docker 20.10 bound IPv4 and IPv6 on
	// drifting ports and one server was reported at another's: CI, stop 23.)
	t.Run("EachServerAtItsOwnAddress", func(t *testing.T) {
		const n = 9
		specs := make([]backend.ContainerSpec, n)
		for i := range specs {
			specs[i] = serverSpec(t, image, netName, lbl)
			specs[i].PublishIP = "0.0.0.0"
			specs[i].Cmd = []string{"sh", "-c", `mkdir -p /tmp/w && echo "$0" > /tmp/w/index.html && exec httpd -f -p 8888 -h /tmp/w`, specs[i].Name}
		}
		got := make([]backend.Container, n)
		errs := make(chan error, n)
		for i := range specs {
			go func() {
				c, err := rt.Run(ctxFor(t, 2*time.Minute), specs[i])
				got[i] = c
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		for _, c := range got {
			if c.ID != "" {
				defer rt.Remove(context.Background(), c.ID, 0)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		seen := map[int]string{}
		for i, c := range got {
			if c.State != backend.Running {
				t.Fatalf("%s: %s (exit %d, %s)", specs[i].Name, c.State, c.ExitCode, c.Error)
			}
			r := spawndswarm.DefaultPorts
			if c.HostPort < r.First || c.HostPort > r.Last {
				t.Errorf("%s published on %d, outside %s", specs[i].Name, c.HostPort, r)
			}
			if other, dup := seen[c.HostPort]; dup {
				t.Errorf("%s and %s both on port %d", other, specs[i].Name, c.HostPort)
			}
			seen[c.HostPort] = specs[i].Name
			addr := net.JoinHostPort(c.HostIP, strconv.Itoa(c.HostPort))
			body := getWithin(t, "http://"+addr+"/", 30*time.Second)
			if strings.TrimSpace(body) != specs[i].Name {
				t.Errorf("%s's address %s answers as %q", specs[i].Name, addr, strings.TrimSpace(body))
			}
			// What the node bound: one port for every address family.
			f := client.Filters{}
			f.Add("service", c.ID)
			tasks, err := testenv.Client(mgr).TaskList(ctxFor(t, 10*time.Second), client.TaskListOptions{Filters: f})
			if err != nil || len(tasks.Items) != 1 {
				t.Fatalf("the task of %s: %v", specs[i].Name, err)
			}
			for _, p := range tasks.Items[0].Status.PortStatus.Ports {
				if int(p.PublishedPort) != c.HostPort {
					t.Errorf("%s: its node bound %d as well as %d", specs[i].Name, p.PublishedPort, c.HostPort)
				}
			}
		}
		t.Logf("%d servers on ports %v", n, slices.Sorted(maps.Keys(seen)))
	})

	// The range is the swarm's, not spawnd's alone: a port another
	// service publishes is skipped, and a full range says what to change.
	t.Run("PortRangeSharedWithOtherServices", func(t *testing.T) {
		few := spawndswarm.PortRange{First: 31000, Last: 31001}
		o := opts
		o.Ports = few
		small := newSwarm(t, o)
		zero := uint64(0)
		foreign, err := testenv.Client(mgr).ServiceCreate(ctxFor(t, 10*time.Second), client.ServiceCreateOptions{Spec: swarm.ServiceSpec{
			Annotations:  swarm.Annotations{Name: fmt.Sprintf("spawnd-test-foreign-%d", time.Now().UnixNano()%1e9), Labels: lbl},
			TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: image, Args: []string{"sleep", "60"}}},
			Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &zero}},
			EndpointSpec: &swarm.EndpointSpec{Ports: []swarm.PortConfig{{TargetPort: 80, PublishedPort: 31000, PublishMode: swarm.PortConfigPublishModeHost}}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer testenv.Client(mgr).ServiceRemove(context.Background(), foreign.ID, client.ServiceRemoveOptions{})
		spec := serverSpec(t, image, netName, lbl)
		spec.PublishIP = "0.0.0.0"
		c, err := small.Run(ctxFor(t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer small.Remove(context.Background(), c.ID, 0)
		if c.HostPort != 31001 {
			t.Errorf("published on %d; want 31001 (31000 is the other service's)", c.HostPort)
		}
		spec2 := serverSpec(t, image, netName, lbl)
		spec2.PublishIP = "0.0.0.0"
		if c2, err := small.Run(ctxFor(t, time.Minute), spec2); err == nil || !strings.Contains(err.Error(), "widen the range") {
			small.Remove(context.Background(), c2.ID, 0)
			t.Errorf("a start with the range full: %v; want an error that says to widen it", err)
		}
		if svcs, err := testenv.Client(mgr).ServiceList(ctxFor(t, 10*time.Second), client.ServiceListOptions{}); err == nil {
			for _, s := range svcs.Items {
				if s.Spec.Name == spec2.Name {
					t.Errorf("the refused start left service %s", s.Spec.Name)
				}
			}
		}
	})

	// A task no node can take (it reserves more memory than any node has)
	// ends after PendingTimeout with Swarm's reason, and leaves no service.
	t.Run("PendingPastTheDeadline", func(t *testing.T) {
		o := opts
		o.PendingTimeout = 3 * time.Second
		short := newSwarm(t, o)
		spec := serverSpec(t, image, netName, lbl)
		spec.Memory = 1 << 50 // a pebibyte
		ctx := ctxFor(t, time.Minute)
		var waited []string
		spec.Waiting = func(msg string) { waited = append(waited, msg) }
		_, err := short.Run(ctx, spec)
		var up *backend.Unplaceable
		if !errors.As(err, &up) || !errdefs.IsUnavailable(err) || !strings.Contains(up.Reason, "no node has 1073741824 MiB of memory free") {
			t.Fatalf("Run of a server no node can hold: %v; want it unplaceable, naming the memory no node has", err)
		}
		if len(waited) != 1 || !strings.Contains(waited[0], "Waiting for a machine") {
			t.Errorf("progress while pending: %q; want one line saying it waits for a machine", waited)
		}
		t.Logf("the error: %v", err)
		if cs, err := rt.List(ctx, spec.Labels); err != nil || len(cs) != 0 {
			t.Errorf("after the deadline: %d services, %v; want none", len(cs), err)
		}
		spec = serverSpec(t, image, netName, lbl)
		spec.Placement = []string{"node.labels.spawnd-test-none==1"}
		if _, err := short.Run(ctx, spec); !errors.As(err, &up) || !strings.Contains(up.Reason, "no node matches the profile's placement") {
			t.Fatalf("Run with a placement nothing matches: %v; want unavailable, naming the placement", err)
		}
	})

	// A profile's /dev/shm and reservations on Swarm: the server's
	// /dev/shm has the profile's size; the service reserves the profile's
	// memory and CPU (the scheduler places by them). A server that asks
	// for GPUs is refused before anything is made.
	t.Run("ShmReservationsAndNoGPUs", func(t *testing.T) {
		spec := serverSpec(t, image, netName, lbl)
		spec.ShmSize = 96 << 20
		spec.MemoryReservation, spec.CPUReservation = 32<<20, 250_000_000
		spec.Cmd = []string{"sh", "-c", `echo "shm=$(df -k /dev/shm | tail -1)"; exec httpd -f -p 8888`}
		c, err := rt.Run(ctxFor(t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), c.ID, 0)
		var out string
		for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out, "shm="); time.Sleep(200 * time.Millisecond) {
			if out, err = rt.Logs(ctxFor(t, 10*time.Second), c.ID, 50); err != nil || time.Now().After(deadline) {
				t.Fatalf("the server's log: %q %v", out, err)
			}
		}
		if !strings.Contains(out, " 98304 ") {
			t.Errorf("/dev/shm in the server: %q; want 98304 1K-blocks (96 MiB)", out)
		}
		svc, err := testenv.Client(mgr).ServiceInspect(ctxFor(t, 10*time.Second), c.ID, client.ServiceInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := svc.Service.Spec.TaskTemplate.Resources; r == nil || r.Reservations == nil ||
			r.Reservations.MemoryBytes != 32<<20 || r.Reservations.NanoCPUs != 250_000_000 || r.Limits.MemoryBytes != spec.Memory {
			t.Errorf("the service's resources: %+v; want 32 MiB and 0.25 CPU reserved, the limit kept", r)
		}

		gpu := serverSpec(t, image, netName, lbl)
		gpu.GPUs = &backend.GPURequest{Count: 1}
		if _, err := rt.Run(ctxFor(t, time.Minute), gpu); !errors.Is(err, spawndswarm.ErrNoGPUs) || !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Run of a GPU server: %v; want ErrNoGPUs", err)
		}
		if cs, err := rt.List(ctxFor(t, 10*time.Second), gpu.Labels); err != nil || len(cs) != 0 {
			t.Errorf("after the refused GPU start: %d services, %v; want none", len(cs), err)
		}
	})

	// A drained node's servers end with the reason; new ones go elsewhere.
	t.Run("Drain", func(t *testing.T) {
		spec := serverSpec(t, image, netName, lbl)
		spec.PublishIP = "0.0.0.0"
		c, err := rt.Run(ctxFor(t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), c.ID, 0)
		node := -1
		for i, n := range sw.Nodes {
			if n.Addr.String() == c.HostIP {
				node = i
			}
		}
		if node < 0 {
			t.Fatalf("HostIP %s is no node's", c.HostIP)
		}
		setAvailability(t, mgr, sw.Nodes[node].ID, swarm.NodeAvailabilityDrain)
		defer setAvailability(t, mgr, sw.Nodes[node].ID, swarm.NodeAvailabilityActive)
		got := waitExited(t, rt, c.ID, time.Minute, "its node was drained")
		if !strings.Contains(got.Error, "was drained") {
			t.Errorf("the server of a drained node: error %q; want it to say the node was drained", got.Error)
		}
		if err := rt.Remove(context.Background(), c.ID, 0); err != nil {
			t.Fatal(err)
		}
		again, err := rt.Run(ctxFor(t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), again.ID, 0)
		if again.HostIP == c.HostIP {
			t.Errorf("the next start ran on the drained node %s", c.HostIP)
		}
	})

	// A registry with a password: the daemon's Docker config (the
	// keychain) lets spawnd resolve the image, and its credentials reach
	// the node that pulls it (no node has any of its own), never the
	// service's spec. Without them, the error says to log in.
	t.Run("PrivateRegistry", func(t *testing.T) {
		const user, password = "spawnd", "s3cret-for-the-test-registry"
		reg := sw.StartAuthRegistry(t, user, password)
		ref := sw.PushTo(t, eng, busybox, reg+"/spawnd-test/private:1", &authn.Basic{Username: user, Password: password})

		t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials
		o := opts
		o.Registry = reg
		if _, err := newSwarm(t, o).Run(ctxFor(t, time.Minute), serverSpec(t, ref, netName, lbl)); !errdefs.IsUnauthorized(err) ||
			!strings.Contains(err.Error(), "docker login "+reg) {
			t.Fatalf("Run without credentials: %v; want unauthenticated, saying to docker login %s", err, reg)
		}

		cfgDir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
		if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(`{"auths": {"`+reg+`": {"auth": "`+auth+`"}}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", cfgDir)
		spec := serverSpec(t, ref, netName, lbl)
		spec.PublishIP = "0.0.0.0"
		c, err := newSwarm(t, o).Run(ctxFor(t, 2*time.Minute), spec)
		if err != nil {
			t.Fatalf("Run with the keychain's credentials: %v", err)
		}
		defer rt.Remove(context.Background(), c.ID, 0)
		if c.State != backend.Running || !strings.HasPrefix(c.Image, reg+"/spawnd-test/private@sha256:") {
			t.Fatalf("Run = %s %s; want running from %s by digest", c.State, c.Image, reg)
		}
		res, err := testenv.Client(mgr).ServiceInspect(ctxFor(t, 10*time.Second), c.ID, client.ServiceInspectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(res.Raw), password) || strings.Contains(string(res.Raw), auth) {
			t.Errorf("the service's record holds the registry password")
		}
	})

	// Prepull puts an image on every node, reporting each, and leaves no job.
	t.Run("Prepull", func(t *testing.T) {
		ref := sw.Push(t, eng, busybox, "spawnd-test/prepull:1")
		pinned, err := rt.Pin(ctxFor(t, 30*time.Second), ref)
		if err != nil {
			t.Fatal(err)
		}
		for i := range sw.Nodes {
			if _, err := sw.Node(t, i).ImageInspect(ctxFor(t, 10*time.Second), pinned); !errdefs.IsNotFound(err) {
				t.Fatalf("node %d has %s before the prepull (%v)", i, pinned, err)
			}
		}
		var events []spawndswarm.PrepullEvent
		got, err := rt.Prepull(ctxFor(t, 3*time.Minute), ref, lbl, func(ev spawndswarm.PrepullEvent) { events = append(events, ev) })
		if err != nil || got != pinned {
			t.Fatalf("Prepull = %s, %v; want %s", got, err, pinned)
		}
		for i := range sw.Nodes {
			if _, err := sw.Node(t, i).ImageInspect(ctxFor(t, 10*time.Second), pinned); err != nil {
				t.Errorf("node %d lacks %s after the prepull: %v", i, pinned, err)
			}
		}
		readyNodes := map[string]bool{}
		for _, ev := range events {
			if ev.State == "ready" {
				readyNodes[ev.Node] = true
			}
		}
		if len(readyNodes) != len(sw.Nodes) {
			t.Errorf("progress said ready for %d nodes, want %d: %+v", len(readyNodes), len(sw.Nodes), events)
		}
		f := client.Filters{}
		f.Add("label", "io.spawnd.prepull=true")
		if svcs, err := testenv.Client(mgr).ServiceList(ctxFor(t, 10*time.Second), client.ServiceListOptions{Filters: f}); err != nil || len(svcs.Items) != 0 {
			t.Errorf("after the prepull: %d prepull services, %v; want none", len(svcs.Items), err)
		}
		if _, err := rt.Prepull(ctxFor(t, 30*time.Second), "spawnd-test/absent:1", lbl, nil); !errdefs.IsNotFound(err) {
			t.Errorf("prepull of an image not in the registry: %v; want not-found", err)
		}
	})

	// A node that dies takes its server to exited with the reason, and the
	// next start of that name runs on a node that is up.
	t.Run("NodeDies", func(t *testing.T) {
		spec := serverSpec(t, image, netName, lbl)
		spec.Placement = []string{"node.labels." + testenv.SwarmLabel + "==2"}
		ctx := ctxFor(t, 4*time.Minute)
		c, err := rt.Run(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), c.ID, 0)
		sw.Kill(2)
		got := waitExited(t, rt, c.ID, 2*time.Minute, "its node died")
		if !strings.Contains(got.Error, "is down") {
			t.Errorf("the server of a dead node: error %q; want it to say the node is down", got.Error)
		}
		if err := rt.Remove(context.Background(), c.ID, 0); err != nil {
			t.Fatal(err)
		}
		spec.Placement = nil
		again, err := rt.Run(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Remove(context.Background(), again.ID, 0)
		if again.HostIP == sw.Nodes[2].Addr.String() {
			t.Errorf("the next start ran on the dead node")
		}
	})
}

// waitExited waits until the backend reports the container exited, at most d.
func waitExited(t *testing.T, rt backend.Runtime, id string, d time.Duration, after string) backend.Container {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got, err := rt.Inspect(context.Background(), id)
		if err == nil && got.State == backend.Exited {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after %s the server is %s (%v)", d, after, got.State, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func setAvailability(t *testing.T, mgr *docker.Engine, nodeID string, a swarm.NodeAvailability) {
	t.Helper()
	cli := testenv.Client(mgr)
	ctx := ctxFor(t, 30*time.Second)
	nd, err := cli.NodeInspect(ctx, nodeID, client.NodeInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := nd.Node.Spec
	spec.Availability = a
	if _, err := cli.NodeUpdate(ctx, nodeID, client.NodeUpdateOptions{Version: nd.Node.Version, Spec: spec}); err != nil {
		t.Fatalf("setting node %s %s: %v", nodeID, a, err)
	}
}

func engineVersion(t *testing.T, eng interface {
	Info(context.Context) (backend.Info, error)
}) string {
	in, err := eng.Info(ctxFor(t, 10*time.Second))
	if err != nil {
		return err.Error()
	}
	return in.Version + " API " + in.APIVersion
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newSwarm(t *testing.T, o spawndswarm.Options) *spawndswarm.Swarm {
	t.Helper()
	s, err := spawndswarm.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var specN int

// getWithin GETs url until it answers, for up to d, and returns its body.
func getWithin(t *testing.T, url string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		res, err := http.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(res.Body)
			res.Body.Close()
			if rerr == nil {
				return string(b)
			}
			err = rerr
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer within %s: %v", url, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func serverSpec(t *testing.T, image, netName string, lbl map[string]string) backend.ContainerSpec {
	specN++
	l := map[string]string{"io.spawnd.test.case": fmt.Sprintf("%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), specN)}
	for k, v := range lbl {
		l[k] = v
	}
	return backend.ContainerSpec{
		Name: fmt.Sprintf("spawnd-test-%d-%d", time.Now().UnixNano()%1e9, specN), Image: image, Labels: l,
		Cmd: []string{"httpd", "-f", "-p", "8888"}, Port: 8888, Network: netName, Memory: 64 << 20, PidsLimit: 64,
	}
}

// swarmDeclared is the Set the factory makes for the swarm backend.
func swarmDeclared(t *testing.T, host, registry string) backend.Set {
	set, err := backends.Open(backends.EngineConfig{Backend: "swarm", Host: host, Registry: registry, InsecureRegistry: true}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close() })
	return set
}

// printLines prints each line a second apart, then keeps running.
func printLines(lines ...string) []string {
	script := ""
	for _, l := range lines {
		script += fmt.Sprintf("echo %q; sleep 1; ", l)
	}
	return []string{"sh", "-c", script + "exec sleep 60"}
}
