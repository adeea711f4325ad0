package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/envs"
	"github.com/spawnd/spawnd/images"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd"
)

// syncBuffer is a log sink the daemon's goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestStartsWaitForOneBuild on the real engine: an env whose lock has no
// image yet; three starts at once each wait for it, show the build's
// progress on their own stream, and run once it is built, from one build
// shared by all three. An env whose build fails (its lock names a base
// this engine lacks) fails its start with the builder's reason, and no
// container is left.
func TestStartsWaitForOneBuild(t *testing.T) {
	eng := testenv.Engine(t)
	base := testenv.EnsureDebianBase(t, eng)
	cfg := testConfig(t, eng)
	env := "waitb" + cfg.Instance
	t.Cleanup(func() { testenv.RemoveImages(eng, labels.Env, env) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	spec := filepath.Join(dir, env+".yaml")
	if err := os.WriteFile(spec, []byte(fmt.Sprintf("name: %s\ndescription: waits\nbase: %s\n", env, base)), 0o644); err != nil {
		t.Fatal(err)
	}
	parsed, err := envs.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := images.LockOrLoad(ctx, eng, parsed, spec, images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.CheckImage(ctx, l.Tag()); err == nil {
		t.Fatalf("%s exists before any build", l.Tag())
	}
	// A second env whose lock names a base this engine does not have.
	broken := env + "x"
	bspec := filepath.Join(dir, broken+".yaml")
	if err := os.WriteFile(bspec, []byte(fmt.Sprintf("name: %s\nbase: %s\n", broken, base)), 0o644); err != nil {
		t.Fatal(err)
	}
	bl := *l
	bl.Env, bl.Base.Digest = broken, "sha256:"+strings.Repeat("0", 64)
	if bparsed, err := envs.Load(bspec); err == nil {
		bl.SpecChecksum = bparsed.Checksum()
	}
	bl.Seal()
	if err := envs.WriteLock(envs.LockPath(bspec), &bl); err != nil {
		t.Fatal(err)
	}

	cfg.Envs[env] = spawnd.EnvConfig{Spec: spec}
	cfg.Envs[broken] = spawnd.EnvConfig{Spec: bspec}
	cfg.DefaultEnv = env
	cfg.Teams = map[string]spawnd.TeamConfig{"t": {Groups: []string{"g"}, Envs: []string{broken}}}
	cfg.StartTimeout = 3 * time.Minute
	var logs syncBuffer
	h := startDaemonLogger(t, eng, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	listen := []string{"perl", "-MIO::Socket::INET", "-e",
		`$s = IO::Socket::INET->new(LocalPort => 8888, Listen => 5, ReuseAddr => 1) or die; while ($c = $s->accept) { close $c }`}

	users := []string{"wa", "wb", "wc"}
	errs := make(chan error, len(users))
	for _, u := range users {
		go func() {
			_, err := h.client.Start(ctx, u, "", api.StartRequest{Cmd: listen})
			errs <- err
		}()
	}
	for range users {
		if err := <-errs; err != nil {
			t.Fatalf("a start that waited for the build: %v\n%s", err, logs.String())
		}
	}
	for _, u := range users {
		var msgs []string
		_ = h.client.Progress(ctx, u, "", func(ev api.ProgressEvent) error { msgs = append(msgs, ev.Message); return nil })
		all := strings.Join(msgs, "|")
		if !strings.Contains(all, "its image is being built") || !strings.Contains(all, "Building env "+env+": ") || !strings.Contains(all, "image built") {
			t.Errorf("%s's progress: %q; want the build's own progress in it", u, msgs)
		}
	}
	if n := strings.Count(logs.String(), "a start waits for the image of its env: building it"); n != 1 {
		t.Errorf("%d builds for three waiting starts; want one", n)
	}
	if err := eng.CheckImage(ctx, l.Tag()); err != nil {
		t.Fatalf("after the starts, %s: %v", l.Tag(), err)
	}

	_, err = h.client.Start(ctx, "wd", "", api.StartRequest{Env: broken, Groups: []string{"g"}, Cmd: listen})
	if err == nil || !strings.Contains(err.Error(), "could not be built") {
		t.Fatalf("a start whose build fails: %v; want the build's failure", err)
	}
	t.Logf("the failed build's start: %v", err)
	servers, _ := h.client.List(ctx)
	for _, s := range servers {
		if s.User == "wd" && s.ContainerID != "" {
			t.Errorf("the failed start left a container: %+v", s)
		}
	}
}
