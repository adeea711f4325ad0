package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// Swarm is a real multi-node Docker Swarm on this machine: one dockerd per
// node, each in a network namespace of its own (spawnd-test-sw<id><n>) with
// its own data root, exec root, socket and containerd, joined over a host
// bridge (spbrsw<id>, 198.19.<net>.0/24: the benchmarking range, never
// routed outside). Node 0 is the manager; the others are workers. The nodes
// share this machine's file system, so a host path exists on every node,
// except LocalPath: each node has a mount namespace of its own in which its
// own directory (SwarmNode.Local) is mounted there, as a disk of its own.
// Each node has a host name of its own (UTS namespace) too.
type Swarm struct {
	ID     string
	Bridge string
	Nodes  []*SwarmNode
	// Registry is the swarm's registry (host:port, plain HTTP): Debian's
	// docker-registry, the distribution server, on the bridge's gateway;
	// every node lists it in --insecure-registry.
	Registry string
	// LocalPath is the path at which each node sees its own SwarmNode.Local
	// (on this machine's namespace it is an empty directory).
	LocalPath  string
	rule       []string // the FORWARD rule that lets the bridge's ports talk
	registries []*exec.Cmd
	dir        string
	gw         netip.Addr
}

// SwarmNode is one dockerd of a Swarm.
type SwarmNode struct {
	Name string     // the network namespace
	Addr netip.Addr // its address on the bridge
	Host string     // its socket, for docker.New
	ID   string     // its swarm node ID
	// Hostname is the node's host name, as the swarm lists it.
	Hostname string
	// Local is the directory this node sees at Swarm.LocalPath: the test
	// reads and writes what is on "this node's disk" here.
	Local string
	dir   string
	cmd   *exec.Cmd
}

// TB is what the swarm harness needs of a test; a *testing.T is one, and
// bench/ gives its own to stand a swarm up outside go test.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// SwarmLabel is a node label the harness sets: the node's index ("0", "1", …).
const SwarmLabel = "io.spawnd.test.node"

// NewSwarm starts a swarm of n nodes on 198.19.<net>.0/24 and takes it
// down when the test ends: services removed, dockerds stopped by PID,
// their mounts, directories, namespaces, bridge and FORWARD rule removed
// (scripts/sweep removes what a killed test leaves).
func NewSwarm(t TB, n int, net byte) *Swarm {
	t.Helper()
	skip := func(format string, args ...any) {
		if tb, ok := t.(testing.TB); ok {
			ci.Skip(tb, format, args...)
		}
		t.Fatalf(format, args...)
	}
	if os.Getuid() != 0 {
		skip("a swarm of private dockerds needs root")
	}
	for _, bin := range []string{"dockerd", "ip", "nsenter", "iptables", "docker-registry"} {
		if _, err := exec.LookPath(bin); err != nil {
			skip("no %s on PATH (scripts/test installs it)", bin)
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	s := &Swarm{ID: hex.EncodeToString(b)}
	s.Bridge = "spbrsw" + s.ID
	gw := netip.AddrFrom4([4]byte{198, 19, net, 1})
	ipcmd := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	t.Cleanup(s.down)
	ipcmd("link", "add", s.Bridge, "type", "bridge")
	ipcmd("addr", "add", gw.String()+"/24", "dev", s.Bridge)
	ipcmd("link", "set", s.Bridge, "up")
	// The machine's engine sets FORWARD's policy to DROP: let the nodes
	// talk to each other across the bridge.
	s.rule = []string{"FORWARD", "-i", s.Bridge, "-o", s.Bridge, "-j", "ACCEPT", "-m", "comment", "--comment", "spawnd-test-swarm"}
	if out, err := exec.Command("iptables", append([]string{"-I"}, s.rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v %s", err, out)
	}
	s.startRegistry(t, gw)
	for i := 0; i < n; i++ {
		node := &SwarmNode{Name: fmt.Sprintf("%ssw%s%d", NetnsPrefix, s.ID, i), Addr: netip.AddrFrom4([4]byte{198, 19, net, byte(10 + i)})}
		s.Nodes = append(s.Nodes, node)
		hostIf, nsIf := fmt.Sprintf("spsh%s%d", s.ID, i), fmt.Sprintf("spsn%s%d", s.ID, i)
		ipcmd("netns", "add", node.Name)
		ipcmd("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
		ipcmd("link", "set", hostIf, "master", s.Bridge, "up")
		ipcmd("link", "set", nsIf, "netns", node.Name)
		ipcmd("-n", node.Name, "addr", "add", node.Addr.String()+"/24", "dev", nsIf)
		ipcmd("-n", node.Name, "link", "set", nsIf, "up")
		ipcmd("-n", node.Name, "link", "set", "lo", "up")
		ipcmd("-n", node.Name, "route", "add", "default", "via", gw.String())
		dir, err := os.MkdirTemp("", "spawnd-dockerd-sw-")
		if err != nil {
			t.Fatal(err)
		}
		node.dir, node.Host = dir, "unix://"+filepath.Join(dir, "docker.sock")
		node.Hostname, node.Local = fmt.Sprintf("sw%s-node%d", s.ID, i), filepath.Join(dir, "local")
		if err := os.Mkdir(node.Local, 0o755); err != nil {
			t.Fatal(err)
		}
		node.start(t, s.Registry, s.LocalPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mgr := s.client(t, 0)
	defer mgr.Close()
	if _, err := Client(mgr).SwarmInit(ctx, client.SwarmInitOptions{ListenAddr: s.Nodes[0].Addr.String() + ":2377",
		AdvertiseAddr: s.Nodes[0].Addr.String() + ":2377"}); err != nil {
		t.Fatalf("swarm init on %s: %v", s.Nodes[0].Name, err)
	}
	sw, err := Client(mgr).SwarmInspect(ctx, client.SwarmInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, node := range s.Nodes[1:] {
		c := s.client(t, i+1)
		_, err := Client(c).SwarmJoin(ctx, client.SwarmJoinOptions{ListenAddr: node.Addr.String() + ":2377", AdvertiseAddr: node.Addr.String() + ":2377",
			RemoteAddrs: []string{s.Nodes[0].Addr.String() + ":2377"}, JoinToken: sw.Swarm.JoinTokens.Worker})
		c.Close()
		if err != nil {
			t.Fatalf("%s joining the swarm: %v", node.Name, err)
		}
	}
	// Every node Ready, and labelled with its index (as tests find them).
	deadline := time.Now().Add(90 * time.Second)
	for {
		nodes, err := Client(mgr).NodeList(ctx, client.NodeListOptions{})
		ready := 0
		if err == nil {
			for _, nd := range nodes.Items {
				if nd.Status.State == swarm.NodeStateReady {
					ready++
				}
			}
		}
		if ready == n {
			for _, nd := range nodes.Items {
				for i, node := range s.Nodes {
					if nd.Status.Addr == node.Addr.String() {
						node.ID = nd.ID
						spec := nd.Spec
						if spec.Labels == nil {
							spec.Labels = map[string]string{}
						}
						spec.Labels[SwarmLabel] = fmt.Sprint(i)
						if _, err := Client(mgr).NodeUpdate(ctx, nd.ID, client.NodeUpdateOptions{Version: nd.Version, Spec: spec}); err != nil {
							t.Fatalf("labelling node %d: %v", i, err)
						}
					}
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d swarm nodes ready after 90 s (%v)", ready, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i, node := range s.Nodes {
		if node.ID == "" {
			t.Fatalf("swarm node %d (%s) is not in the manager's node list", i, node.Addr)
		}
	}
	return s
}

// startRegistry runs docker-registry on gw:5000 with its storage in a
// directory of the swarm's, and waits until it answers.
func (s *Swarm) startRegistry(t TB, gw netip.Addr) {
	t.Helper()
	dir, err := os.MkdirTemp("", "spawnd-registry-sw-")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = dir
	s.gw = gw
	s.Registry = gw.String() + ":5000"
	s.LocalPath = filepath.Join(dir, "node-local")
	if err := os.Mkdir(s.LocalPath, 0o755); err != nil {
		t.Fatal(err)
	}
	s.runRegistry(t, "open", s.Registry, "")
}

// AuthRegistryPort is where StartAuthRegistry listens on the gateway;
// every node lists it in --insecure-registry too.
const AuthRegistryPort = 5001

// StartAuthRegistry runs a second docker-registry, on gw:5001, that
// answers only user with password (htpasswd, bcrypt), and returns its address.
func (s *Swarm) StartAuthRegistry(t TB, user, password string) string {
	t.Helper()
	out, err := exec.Command("htpasswd", "-Bbn", user, password).Output()
	if err != nil {
		t.Fatalf("htpasswd (apache2-utils; scripts/test installs it): %v", err)
	}
	file := filepath.Join(s.dir, "htpasswd")
	if err := os.WriteFile(file, out, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("%s:%d", s.gw, AuthRegistryPort)
	s.runRegistry(t, "auth", addr, fmt.Sprintf("auth: {htpasswd: {realm: spawnd-test, path: %s}}\n", file))
	return addr
}

// runRegistry starts docker-registry (named name, in a subdirectory of the
// swarm's) on addr with extra config, and waits until it answers.
func (s *Swarm) runRegistry(t TB, name, addr, extra string) {
	t.Helper()
	s.registries = append(s.registries, startRegistry(t, filepath.Join(s.dir, name), addr, extra))
}

// startRegistry starts docker-registry with its config and storage in dir,
// on addr with extra config, waits until it answers, and returns it (the
// caller ends it).
func startRegistry(t TB, dir, addr, extra string) *exec.Cmd {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: %q}\n%s",
		filepath.Join(dir, "data"), addr, extra)
	if err := os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("docker-registry", "serve", filepath.Join(dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry (Debian's docker-registry; scripts/test installs it): %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK || res.StatusCode == http.StatusUnauthorized {
				return cmd
			}
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("docker-registry on %s did not answer within 30 s: %v\n%s", addr, err, tail(b))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// NewLocalRegistry runs Debian's docker-registry on 127.0.0.1 (which every
// engine reaches over plain HTTP) for the test, answering only user with
// password (htpasswd, bcrypt) when user is set, and returns its host:port.
func NewLocalRegistry(t TB, user, password string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spawnd-registry-lo-")
	if err != nil {
		t.Fatal(err)
	}
	extra := ""
	if user != "" {
		out, err := exec.Command("htpasswd", "-Bbn", user, password).Output()
		if err != nil {
			t.Fatalf("htpasswd (apache2-utils; scripts/test installs it): %v", err)
		}
		file := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(file, out, 0o600); err != nil {
			t.Fatal(err)
		}
		extra = fmt.Sprintf("auth: {htpasswd: {realm: spawnd-test, path: %s}}\n", file)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	cmd := startRegistry(t, filepath.Join(dir, "registry"), addr, extra)
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	})
	return addr
}

// Push copies an image from the machine's engine to the swarm's registry
// as repo:tag and returns the reference (by tag) nodes pull.
func (s *Swarm) Push(t TB, from *docker.Engine, ref, repoTag string) string {
	t.Helper()
	return s.PushTo(t, from, ref, s.Registry+"/"+repoTag, authn.Anonymous)
}

// PushTo copies an image from the machine's engine to dst (a plain-HTTP
// registry of the swarm's) with auth, and returns dst.
func (s *Swarm) PushTo(t TB, from *docker.Engine, ref, dst string, auth authn.Authenticator) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := from.Image(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuth(auth)); err != nil {
		t.Fatalf("pushing %s to %s: %v", ref, r, err)
	}
	return r.String()
}

func (node *SwarmNode) start(t TB, registry, localPath string) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(node.dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// nsenter, not "ip netns exec": that remounts /sys, and dockerd then
	// fails with "Devices cgroup isn't mounted". unshare gives the node a
	// mount namespace (its Local at localPath) and a host name of its own;
	// unshare, sh and nsenter each exec the next, so the PID is dockerd's;
	// it ends with the test binary.
	cmd := exec.Command("unshare", "--mount", "--uts", "--propagation", "private", "--",
		"sh", "-euc", `hostname "$1"; mount --bind "$2" "$3"; shift 3; exec "$@"`, "sh", node.Hostname, node.Local, localPath,
		"nsenter", "--net=/var/run/netns/"+node.Name, "dockerd",
		"--data-root", filepath.Join(node.dir, "data"), "--exec-root", filepath.Join(node.dir, "exec"),
		"--pidfile", filepath.Join(node.dir, "docker.pid"), "-H", node.Host, "--bridge", "none", "--insecure-registry", registry,
		"--insecure-registry", strings.Split(registry, ":")[0]+":"+strconv.Itoa(AuthRegistryPort),
		"--containerd-namespace", "sw"+filepath.Base(node.dir), "--containerd-plugins-namespace", "sw"+filepath.Base(node.dir)+"p")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	node.cmd = cmd
	if err := waitDockerd(node.Host, filepath.Join(node.dir, "dockerd.log"), 60*time.Second); err != nil {
		t.Fatalf("swarm node %s: dockerd did not start: %v", node.Name, err)
	}
}

// client is an engine client of node i.
func (s *Swarm) client(t TB, i int) *docker.Engine {
	t.Helper()
	eng, err := docker.New(s.Nodes[i].Host)
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// Manager is an engine client of the manager node; the test closes it.
func (s *Swarm) Manager(t TB) *docker.Engine {
	t.Helper()
	eng := s.client(t, 0)
	t.Cleanup(func() { eng.Close() })
	return eng
}

// Node is an engine client of node i; the test closes it.
func (s *Swarm) Node(t TB, i int) *docker.Engine {
	t.Helper()
	eng := s.client(t, i)
	t.Cleanup(func() { eng.Close() })
	return eng
}

// LoadImage copies an image from the machine's engine into every node.
func (s *Swarm) LoadImage(t TB, from *docker.Engine, ref string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := from.Image(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	for i := range s.Nodes {
		to := s.client(t, i)
		err := to.WriteImage(ctx, ref, img)
		to.Close()
		if err != nil {
			t.Fatalf("loading %s into swarm node %d: %v", ref, i, err)
		}
	}
}

// Kill ends node i's dockerd with SIGKILL, as a machine that dies.
func (s *Swarm) Kill(i int) {
	node := s.Nodes[i]
	if node.cmd == nil {
		return
	}
	_ = syscall.Kill(-node.cmd.Process.Pid, syscall.SIGKILL)
	_ = node.cmd.Wait()
	node.cmd = nil
}

// down takes the swarm apart, workers first.
func (s *Swarm) down() {
	for i := len(s.Nodes) - 1; i >= 0; i-- {
		node := s.Nodes[i]
		if node.cmd != nil {
			if eng, err := docker.New(node.Host); err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, _ = Client(eng).SwarmLeave(ctx, client.SwarmLeaveOptions{Force: true})
				cancel()
				eng.Close()
			}
			_ = node.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = node.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = syscall.Kill(-node.cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			node.cmd = nil
		}
		if node.dir != "" {
			(&OwnEngine{dir: node.dir}).reapLeftovers()
			_ = os.RemoveAll(node.dir)
		}
		_ = exec.Command("ip", "netns", "del", node.Name).Run()
	}
	for _, r := range s.registries {
		_ = syscall.Kill(-r.Process.Pid, syscall.SIGKILL)
		_ = r.Wait()
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
	if s.rule != nil {
		_ = exec.Command("iptables", append([]string{"-D"}, s.rule...)...).Run()
	}
	_ = exec.Command("ip", "link", "del", s.Bridge).Run()
}

// String names the swarm's nodes, for logs.
func (s *Swarm) String() string {
	var b strings.Builder
	for i, n := range s.Nodes {
		fmt.Fprintf(&b, "node %d %s %s; ", i, n.Name, n.Addr)
	}
	return b.String()
}
