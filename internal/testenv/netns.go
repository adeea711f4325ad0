package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"golang.org/x/sys/unix"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// NetnsPrefix names every network namespace tests make; scripts/sweep
// deletes those left behind.
const NetnsPrefix = "spawnd-test-"

// StandIn is a host of the test's own: a network namespace joined to this
// host by a veth pair on a /30 of 198.18.0.0/15 (the benchmarking range,
// never routed on the internet), serving HTTP on port 80. It stands in for
// an address user containers must or must not reach (a cloud metadata
// service, a private network, the internet); no real outside address is
// ever contacted.
type StandIn struct {
	Name   string       // the namespace
	Net    netip.Prefix // the /30
	Addr   netip.Addr   // the namespace's address, where HTTP answers
	HostIP netip.Addr   // this host's end
}

// NewStandIn makes a stand-in on 198.18.<third>.<4*fourth>/30 and removes it
// with the test (the server process by PID, then the namespace, which takes
// the veth pair with it).
func NewStandIn(t testing.TB, third, fourth byte) *StandIn {
	t.Helper()
	if os.Getuid() != 0 {
		ci.Skip(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		ci.Skip(t, "no ip command (apt-get install iproute2)")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	base := netip.AddrFrom4([4]byte{198, 18, third, fourth * 4})
	s := &StandIn{Name: NetnsPrefix + id, Net: netip.PrefixFrom(base, 30), HostIP: base.Next(), Addr: base.Next().Next()}
	hostIf, nsIf := "sptv"+id, "sptp"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	run("netns", "add", s.Name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", s.Name).Run()
		_ = exec.Command("ip", "link", "del", hostIf).Run()
	})
	run("link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	run("link", "set", nsIf, "netns", s.Name)
	run("addr", "add", s.HostIP.String()+"/30", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", s.Name, "addr", "add", s.Addr.String()+"/30", "dev", nsIf)
	run("-n", s.Name, "link", "set", nsIf, "up")
	run("-n", s.Name, "link", "set", "lo", "up")

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("stand-in "+s.Name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command("ip", "netns", "exec", s.Name, "python3", "-m", "http.server", "80", "--bind", s.Addr.String(), "--directory", dir)
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		t.Fatalf("starting the stand-in's HTTP server: %v", err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(s.Addr.String(), "80"), time.Second)
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stand-in %s never answered on %s:80: %v", s.Name, s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Reachable runs a TCP connect plus an HTTP/1.0 GET from inside the
// container id (busybox nc, at most 3 s) and reports whether an HTTP answer
// came back.
func Reachable(ctx context.Context, t testing.TB, eng *docker.Engine, id, hostPort string) bool {
	t.Helper()
	host, port, _ := net.SplitHostPort(hostPort)
	code, out, err := Exec(ctx, eng, id, []string{"sh", "-c",
		fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %s | grep -q '^HTTP/'`, host, port)})
	if err != nil {
		t.Fatalf("exec in %s: %v %s", id, err, out)
	}
	return code == 0
}

// Exec runs cmd in a running container and returns its exit code and output.
func Exec(ctx context.Context, eng *docker.Engine, id string, cmd []string) (int, string, error) {
	cli := Client(eng)
	ex, err := cli.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return 0, "", err
	}
	att, err := cli.ExecAttach(ctx, ex.ID, client.ExecAttachOptions{})
	if err != nil {
		return 0, "", err
	}
	// The engine frames a non-TTY exec's output (stdout and stderr, an
	// 8-byte header per chunk): demultiplexed here, or a chunk's header
	// lands inside the text (a test once read "\x01\x00…\x0fnode1" as the
	// last line of an HTTP answer cat wrote in two reads).
	var buf bytes.Buffer
	_, _ = stdcopy.StdCopy(&buf, &buf, io.LimitReader(att.Reader, 1<<20))
	out := buf.Bytes()
	att.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ins, err := cli.ExecInspect(ctx, ex.ID, client.ExecInspectOptions{})
		if err != nil {
			return 0, string(out), err
		}
		if !ins.Running {
			return ins.ExitCode, string(out), nil
		}
		if time.Now().After(deadline) {
			return 0, string(out), fmt.Errorf("exec %v still running after its output ended", cmd)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DialContext opens a connection from inside the stand-in's namespace, as a
// machine elsewhere on the network would: the socket is made on an OS
// thread switched into the namespace (and that thread is then discarded),
// so the peer sees the stand-in's address, never loopback. Give it to an
// http.Transport to drive a browser-like client from there.
func (s *StandIn) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(s.Name, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// NewNetns makes an empty network namespace (loopback up) named with
// NetnsPrefix, removed with the test (scripts/sweep removes it after a
// kill), and returns its name.
func NewNetns(t testing.TB) string {
	Full(t, "network namespaces of its own")
	t.Helper()
	if os.Getuid() != 0 {
		ci.Skip(t, "network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		ci.Skip(t, "no ip command (apt-get install iproute2)")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := NetnsPrefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v %s", name, err, out)
	}
	return name
}

// InNetns runs fn on an OS thread inside the network namespace name:
// sockets and netlink connections fn opens belong to that namespace and
// stay there after fn returns. The thread is discarded afterwards, so no
// other goroutine ever runs in the namespace.
func InNetns(name string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := os.Open(filepath.Join("/var/run/netns", name))
		if err != nil {
			ch <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("entering %s: %w", name, err)
			return
		}
		ch <- fn()
	}()
	return <-ch
}
