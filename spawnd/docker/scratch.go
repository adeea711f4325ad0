package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Scratch is a throw-away dockerd with a data root and a network namespace
// of its own: an empty image store and build cache, no default bridge, no
// iptables rules, and nothing it does reaches the machine's links. It
// serves offline builds (spawnd verify) and ends with Close, or with the
// process that started it.
type Scratch struct {
	*Engine
	dir string
	cmd *exec.Cmd
}

// StartScratch starts a scratch engine; it needs root and dockerd on PATH.
// Its directory is /tmp/spawnd-dockerd-scratch-*, which scripts/sweep
// clears if the process that started it was killed.
func StartScratch(ctx context.Context) (*Scratch, error) {
	if os.Getuid() != 0 {
		return nil, errors.New("a scratch engine is a private dockerd, which needs root")
	}
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		return nil, errors.New("a scratch engine needs dockerd on PATH (Debian: apt-get install docker.io)")
	}
	dir, err := os.MkdirTemp("", "spawnd-dockerd-scratch-")
	if err != nil {
		return nil, err
	}
	host := "unix://" + filepath.Join(dir, "docker.sock")
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"-H", host, "--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	// A network namespace of its own: it builds with no network, and what a
	// dockerd does to links at start (with --bridge=none it deletes any
	// "docker0", which would be the machine's engine's) stays inside it.
	// Its socket is a file, reachable from here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM, Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting a scratch dockerd: %w", err)
	}
	s := &Scratch{dir: dir, cmd: cmd}
	if s.Engine, err = New(host); err != nil {
		s.Close()
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.Ping(pctx)
		cancel()
		if err == nil {
			return s, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			s.Close()
			if len(b) > 2000 {
				b = b[len(b)-2000:]
			}
			return nil, fmt.Errorf("the scratch dockerd did not answer within 60 s: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Close stops the scratch engine and removes its data root.
func (s *Scratch) Close() error {
	if s.Engine != nil {
		s.Engine.Close()
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	return os.RemoveAll(s.dir)
}
