package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/docker"
)

// OwnEngine is a second dockerd that one test owns, so it can stop and
// restart it without touching the machine's engine. It has its own data
// root, exec root, socket and default bridge (never docker0: a dockerd
// started with --bridge=none deletes docker0), and no iptables rules.
type OwnEngine struct {
	t      testing.TB
	dir    string
	Host   string
	bridge string
	cmd    *exec.Cmd
}

// StartOwnEngine starts a private dockerd (as root; needs dockerd on PATH).
func StartOwnEngine(t testing.TB) *OwnEngine {
	t.Helper()
	if os.Getuid() != 0 {
		ci.Skip(t, "a private dockerd needs root")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		ci.Skip(t, "no dockerd (apt-get install docker.io)")
	}
	dir, err := os.MkdirTemp("", "spawnd-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	e := &OwnEngine{t: t, dir: dir, Host: "unix://" + filepath.Join(dir, "docker.sock")}
	// A bridge of its own for the default network.
	e.bridge = fmt.Sprintf("spbr%d", os.Getpid()%100000)
	for _, args := range [][]string{
		{"link", "add", "name", e.bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("10.213.%d.1/24", os.Getpid()%250), "dev", e.bridge},
		{"link", "set", e.bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	t.Cleanup(func() {
		e.removeNetworks()
		e.Stop()
		e.reapLeftovers()
		_ = exec.Command("ip", "link", "del", e.bridge).Run()
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing the private engine's directory: %v", err)
		}
	})
	e.Start(false)
	return e
}

// Start starts the dockerd (again), optionally with live-restore.
func (e *OwnEngine) Start(liveRestore bool) {
	e.t.Helper()
	args := []string{"--data-root", filepath.Join(e.dir, "data"), "--exec-root", filepath.Join(e.dir, "exec"),
		"-H", e.Host, "--pidfile", filepath.Join(e.dir, "docker.pid"),
		"--bridge=" + e.bridge, "--iptables=false", "--ip-masq=false",
		// Its networks' bridges live in the host's kernel: keep their subnets
		// away from the machine's engine's pools (172.17-31/16, 192.168/20).
		"--default-address-pool", "base=10.214.0.0/16,size=24"}
	if liveRestore {
		args = append(args, "--live-restore")
	}
	logf, err := os.OpenFile(filepath.Join(e.dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// It ends with the test binary, even after go test's -timeout kill
	// (scripts/sweep cleans up what a SIGKILL of dockerd itself leaves).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.cmd = cmd
	if err := waitDockerd(e.Host, filepath.Join(e.dir, "dockerd.log"), 30*time.Second); err != nil {
		e.t.Fatalf("private dockerd did not start: %v", err)
	}
}

// removeNetworks removes the private engine's networks (and with them their
// bridges in the host's kernel), starting it if it is stopped.
func (e *OwnEngine) removeNetworks() {
	if e.cmd == nil {
		e.Start(false)
	}
	eng, err := docker.New(e.Host)
	if err != nil {
		return
	}
	defer eng.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := Client(eng).ContainerList(ctx, client.ContainerListOptions{All: true})
	if err == nil {
		for _, c := range res.Items {
			if _, err := Client(eng).ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil {
				e.t.Logf("removing a private engine's container: %v", err)
			}
		}
	}
	_, _ = Client(eng).NetworkPrune(ctx, client.NetworkPruneOptions{})
}

// reapLeftovers ends what a stopped dockerd can leave behind (with
// live-restore, container shims keep running by design) and unmounts what
// it mounted under its directory, so nothing of the test outlives it.
func (e *OwnEngine) reapLeftovers() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	// The containers of an engine killed with SIGKILL outlive it and its
	// shims (reparented to init): end every process in one of its
	// containers' cgroups first.
	ids, _ := os.ReadDir(filepath.Join(e.dir, "data", "containers"))
	if len(ids) > 0 {
		for _, p := range procs {
			cg, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup"))
			if err != nil {
				continue
			}
			for _, id := range ids {
				if len(id.Name()) == 64 && strings.Contains(string(cg), id.Name()) {
					var pid int
					if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
					break
				}
			}
		}
	}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), e.dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	b, _ := os.ReadFile("/proc/self/mounts")
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], e.dir) {
			mounts = append(mounts, f[1])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// Stop stops the dockerd with SIGTERM, as systemctl stop docker would.
func (e *OwnEngine) Stop() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	e.cmd = nil
}

// LoadImage copies an image from the machine's engine into this one.
func (e *OwnEngine) LoadImage(t testing.TB, from *docker.Engine, ref string) {
	t.Helper()
	to, err := docker.New(e.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer to.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := from.Image(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := to.WriteImage(ctx, ref, img); err != nil {
		t.Fatal(fmt.Errorf("loading %s into the private engine: %w", ref, err))
	}
}

// waitDockerd waits until the dockerd at host answers a ping, at most
// within; the error carries the end of its log.
func waitDockerd(host, logPath string, within time.Duration) error {
	eng, err := docker.New(host)
	if err != nil {
		return err
	}
	defer eng.Close()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := eng.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("%w\n%s", err, tail(b))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
