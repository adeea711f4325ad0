package spawnd

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
)

// EnvBuild builds an env's current lock into its image (the daemon wires
// images.Build); progress hears what the build does, in words.
type EnvBuild func(ctx context.Context, env string, progress func(msg string)) error

// buildFlight is one build of an env that starts wait for.
type buildFlight struct {
	log  *progressLog // the build's progress, replayed to each waiter
	done chan struct{}
	err  error
}

// buildTable is the builds in flight, by env; its lock is its own (a
// build never changes the view).
type buildTable struct {
	mu sync.Mutex
	m  map[string]*buildFlight
}

// join returns the env's build in flight (false) or a new one (true),
// recorded until done.
func (t *buildTable) join(env string) (*buildFlight, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.m[env]; f != nil {
		return f, false
	}
	if t.m == nil {
		t.m = make(map[string]*buildFlight)
	}
	f := &buildFlight{log: newProgressLog(), done: make(chan struct{})}
	t.m[env] = f
	return f, true
}

// done forgets the env's build.
func (t *buildTable) done(env string) {
	t.mu.Lock()
	delete(t.m, env)
	t.mu.Unlock()
}

// buildFor joins the env's build in flight, or starts one.
func (m *Manager) buildFor(env string) *buildFlight {
	f, started := m.builds.join(env)
	if !started {
		return f
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		ctx, cancel := context.WithTimeout(m.baseCtx, m.buildLimit)
		defer cancel()
		m.log.Info("a start waits for the image of its env: building it", "env", env)
		f.err = m.build(ctx, env, func(msg string) { f.log.add(ProgressEvent{Step: StepImage, Message: msg}) })
		if f.err != nil {
			m.log.Error("the build that starts wait for failed", "env", env, "err", f.err)
		}
		f.log.add(ProgressEvent{Step: StepImage, Message: "build ended", Ready: true})
		m.builds.done(env)
		close(f.done)
	}()
	return f
}

// waitForBuild builds (or joins the build of) the start's env, relaying
// the build's progress to the start's, and checks the image it made.
func (m *Manager) waitForBuild(ctx context.Context, p startPlan, prog *progressLog) error {
	prog.add(ProgressEvent{Progress: 5, Step: StepImage, Message: fmt.Sprintf("Env %s: its image is being built; this start waits for it", p.envName)})
	f := m.buildFor(p.envName)
	err := f.log.Follow(ctx, func(ev ProgressEvent) error {
		if !ev.Ready {
			prog.add(ProgressEvent{Progress: 10, Step: StepImage, Message: "Building env " + p.envName + ": " + ev.Message})
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return errorf(ErrUnavailable, "the image of env %q is still being built after this start waited %s; try again when it is done (start_timeout)", p.envName, m.cfg.StartTimeout)
		}
		return err
	}
	<-f.done
	if f.err != nil {
		reason := f.err.Error()
		if len(reason) > 300 {
			reason = reason[:300] + "…"
		}
		return &Error{Kind: ErrConflict, Msg: fmt.Sprintf("the image of env %q could not be built: %s", p.envName, reason), Cause: f.err}
	}
	if err := m.rt.CheckImage(ctx, p.env.Image); err != nil {
		if errdefs.IsNotFound(err) {
			return errorf(ErrConflict, "the build of env %q ended without the image %s this start runs (did the spec change meanwhile? spawnd build --relock)", p.envName, p.env.Image)
		}
		return m.engineErr("checking the image", err)
	}
	prog.add(ProgressEvent{Progress: 15, Step: StepImage, Message: fmt.Sprintf("Env %s: image built", p.envName)})
	return nil
}
