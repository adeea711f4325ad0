package spawnd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

// TestStartsShareOneBuild: starts of an env built from a spec whose image
// is missing wait for one build, each relaying its progress; a failed
// build fails every waiting start with its reason.
func TestStartsShareOneBuild(t *testing.T) {
	rt := fakebackend.New()
	var builds atomic.Int32
	release := make(chan error)
	build := func(ctx context.Context, env string, progress func(string)) error {
		builds.Add(1)
		progress("layer 1/3")
		err := <-release
		if err == nil {
			rt.SetImage("img:built", "sha256:built")
		}
		return err
	}
	m := newTestManager(t, testConfig(t), rt, WithBuilds(build, time.Minute))
	m.envs.mu.Lock()
	e := m.envs.envs["team"]
	e.Spec, e.Image = "/nonexistent/team.yaml", "img:built"
	m.envs.envs["team"] = e
	m.envs.mu.Unlock()
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, u := range []string{"ann", "bob", "cy"} {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = m.Start(ctx, u, "", StartRequest{}) }()
	}
	// All three wait on the build before it ends.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		n := 0
		for _, u := range []string{"ann", "bob", "cy"} {
			cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond) // what is there now
			_ = m.Progress(cctx, u, "", func(ev ProgressEvent) error {
				if strings.Contains(ev.Message, "Building env team: layer 1/3") {
					n++
					return errors.New("found")
				}
				return nil
			})
			cancel()
		}
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3 starts show the build's progress after 10 s", n)
		}
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	if n := builds.Load(); n != 1 {
		t.Fatalf("%d builds for three waiting starts; want one", n)
	}

	// A build that fails fails its start, with the reason.
	rt.SetImage("img:built", "")
	m.envs.mu.Lock()
	e.Image = "img:other"
	m.envs.envs["team"] = e
	m.envs.mu.Unlock()
	release = make(chan error, 1)
	release <- errors.New("pip: no matching distribution for pandas==9")
	if _, err := m.Start(ctx, "dee", "", StartRequest{}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "could not be built: pip: no matching distribution") {
		t.Fatalf("a start whose build failed: %v", err)
	}
}
