package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
)

// buildBinary builds spawnd once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "spawnd")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building spawnd: %v", err)
	}
	return out
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// daemonProc is `spawnd serve` as a real process.
type daemonProc struct {
	cmd *exec.Cmd
}

func startProc(t *testing.T, bin, config, token string) *daemonProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Env = append(os.Environ(), "SPAWND_TOKEN="+token)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(config), "daemon.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{cmd: cmd}
	t.Cleanup(func() { p.kill(); logf.Close() })
	return p
}

func (p *daemonProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// TestKill9KeepsServersAndRestartAdopts is the "done when" of the daemon: a
// server keeps running through kill -9 of the daemon, is never restarted,
// and the next daemon's first answer already reports it running.
func TestKill9KeepsServersAndRestartAdopts(t *testing.T) {
	eng := testenv.Engine(t)
	inst := testenv.Instance(t, eng)
	img := testenv.EnsureBusybox(t, eng)
	bin := buildBinary(t)
	dir := t.TempDir()
	homes := filepath.Join(dir, "homes")
	if err := os.Mkdir(homes, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	config := filepath.Join(dir, "spawnd.yaml")
	yaml := fmt.Sprintf(`listen: %s
instance: %s
homes_root: %s
network: {name: spawnd-%s}
envs:
  team:
    image: %s
    user: {name: jovyan, uid: 1000, gid: 100}
`, addr, inst, homes, inst, img)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := newToken(t)
	c, err := api.NewClient(addr, tok)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	p := startProc(t, bin, config, tok)
	waitAnswer(t, c)
	user := "Alice.Smith@example.org"
	s, err := c.Start(ctx, user, "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s, err = c.WaitReady(ctx, user, ""); err != nil || !s.Ready {
		t.Fatalf("not ready: %+v %v", s, err)
	}
	before := inspect(t, eng.Client(), s.ContainerID)

	for round := range 3 {
		p.kill()
		after := inspect(t, eng.Client(), s.ContainerID)
		if !after.Running || after.StartedAt != before.StartedAt {
			t.Fatalf("round %d: the container did not survive kill -9 untouched: running=%v started %s -> %s", round, after.Running, before.StartedAt, after.StartedAt)
		}
		began := time.Now()
		p = startProc(t, bin, config, tok)
		first := waitAnswer(t, c)
		elapsed := time.Since(began)
		got, err := c.Status(ctx, user, "")
		if err != nil {
			t.Fatalf("round %d: status after restart: %v", round, err)
		}
		if first != 1 || got.State != api.StateRunning || got.ContainerID != s.ContainerID {
			t.Fatalf("round %d: restarted daemon reports %+v (servers in first answer: %d)", round, got, first)
		}
		t.Logf("round %d: restarted daemon answered with the server running after %s", round, elapsed.Round(time.Millisecond))
	}
	if after := inspect(t, eng.Client(), s.ContainerID); after.StartedAt != before.StartedAt {
		t.Fatal("the container was restarted")
	}
}

// waitAnswer polls the daemon's list until it answers and returns how many
// servers its first answer held.
func waitAnswer(t *testing.T, c *api.Client) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := c.List(ctx)
		cancel()
		if err == nil {
			return len(l)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not answer: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type containerState struct {
	Running   bool
	StartedAt string
}

func inspect(t *testing.T, cli *client.Client, id string) containerState {
	t.Helper()
	res, err := cli.ContainerInspect(context.Background(), id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect %s: %v", id, err)
	}
	return containerState{Running: res.Container.State.Running, StartedAt: res.Container.State.StartedAt}
}

func newToken(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("%x", time.Now().UnixNano()) + "-test-token-0123456789"
}
