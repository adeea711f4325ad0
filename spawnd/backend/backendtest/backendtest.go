// Package backendtest is the lifecycle contract of a backend.Runtime, as
// tests any backend can import and run: run, inspect, labels, the port in
// the backend's own record, name conflicts, listing, events, exit codes,
// removal, adoption after a restart and half-made containers for the
// reaper. The Docker backend runs it on a real engine
// (spawnd/docker.TestConformance) and the shared fake runs it in memory
// (spawnd/backend/fakebackend.TestConformance); a new backend (Swarm) passes
// it before the core may use it.
package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// Harness is what the suite needs of a backend.
type Harness struct {
	// New returns the runtime under test, and a second one on the same
	// engine as a restarted daemon would make (it may be the same value).
	New func(t *testing.T) (rt, restarted backend.Runtime)
	// Image runs Serve; it must be on the engine. Port is the port Serve
	// listens on.
	Image string
	Port  int
	// Network is the network containers attach to ("" = the backend's default).
	Network string
	// Serve is a command that keeps running; ExitWith(code) one that exits
	// with code after about a second.
	Serve    []string
	ExitWith func(code int) []string
	// Labels go on everything the suite makes, so the caller can sweep it.
	Labels map[string]string
	// Exit makes a running container exit with code, for a backend that
	// does not run commands (the fake); nil for a real engine, where
	// ExitWith's command does it.
	Exit func(id string, code int)
	// MakeHalf makes a container of spec that exists and was never
	// started (a run cut off by a crash), and returns its id.
	MakeHalf func(t *testing.T, spec backend.ContainerSpec) string

	// Declares is the backend's Set as its factory makes it; the suite
	// tests each capability it declares (a nil one is not tested: the
	// backend says it lacks it). Its Runtime is not used.
	Declares backend.Set
	// Print(lines...) is a command that prints each line, a second apart,
	// then keeps running (for Logs).
	Print func(lines ...string) []string
	// LocalImage is an image on the engine that Builder and Images work
	// on (for Images).
	LocalImage string
}

// Run runs the contract against h.
func Run(t *testing.T, h Harness) {
	s := &suite{h: h}
	t.Run("RunInspectLabelsPort", s.runInspect)
	t.Run("NameConflictChangesNothing", s.conflict)
	t.Run("MissingImage", s.missingImage)
	t.Run("ListByLabels", s.list)
	t.Run("Events", s.events)
	t.Run("ExitCode", s.exitCode)
	t.Run("RemoveIsIdempotent", s.remove)
	t.Run("AdoptAfterRestart", s.adopt)
	t.Run("HalfMadeIsCreated", s.halfMade)
	if h.Declares.Logs != nil {
		t.Run("FollowLogs", s.followLogs)
	}
	if (h.Declares.Builder == nil) != (h.Declares.Images == nil) {
		t.Errorf("%s declares a Builder without an ImageStore or the reverse: every build is normalized through the store, so both or neither", h.Declares.Name)
	} else if h.Declares.Images != nil {
		t.Run("ImageStore", s.imageStore)
	}
}

// followLogs: FollowLogs writes the lines as the container prints them,
// in order, and returns once the reader leaves.
func (s *suite) followLogs(t *testing.T) {
	rt, _ := s.h.New(t)
	c := s.run(t, rt, s.spec(t, s.h.Print("first line", "second line")))
	ctx, cancel := context.WithTimeout(s.ctx(t), 40*time.Second)
	defer cancel()
	w := &untilWriter{want: "second line", done: cancel}
	err := s.h.Declares.Logs.FollowLogs(ctx, c.ID, 10, w)
	got := w.String()
	if !strings.Contains(got, "first line\nsecond line") {
		t.Fatalf("FollowLogs wrote %q (err %v); want both lines, in order", got, err)
	}
}

// untilWriter keeps what is written and calls done once want appears.
type untilWriter struct {
	mu   sync.Mutex
	b    strings.Builder
	want string
	done func()
}

func (u *untilWriter) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.b.Write(p)
	if strings.Contains(u.b.String(), u.want) {
		u.done()
	}
	return len(p), nil
}

func (u *untilWriter) String() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.b.String()
}

// imageStore: the store reads the image the builder sees, by its config
// digest (the image ID the builder reports).
func (s *suite) imageStore(t *testing.T) {
	ctx := s.ctx(t)
	info, err := s.h.Declares.Builder.ImageInspect(ctx, s.h.LocalImage)
	if err != nil {
		t.Fatalf("Builder.ImageInspect(%s): %v", s.h.LocalImage, err)
	}
	img, err := s.h.Declares.Images.Image(ctx, s.h.LocalImage)
	if err != nil {
		t.Fatalf("Images.Image(%s): %v", s.h.LocalImage, err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.String() != info.ID {
		t.Fatalf("the store's %s has config %s, the builder's ID is %s", s.h.LocalImage, cfg, info.ID)
	}
}

type suite struct{ h Harness }

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// spec is a container spec with a fresh name and the run's own label.
func (s *suite) spec(t *testing.T, cmd []string) backend.ContainerSpec {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	run := hex.EncodeToString(b)
	l := map[string]string{labels.Conformance: run}
	for k, v := range s.h.Labels {
		l[k] = v
	}
	return backend.ContainerSpec{
		Name: "spawnd-conformance-" + run, Image: s.h.Image, Labels: l, Cmd: cmd,
		Port: s.h.Port, Network: s.h.Network, Memory: 256 << 20, PidsLimit: 64,
		Env: []string{"SPAWND_CONFORMANCE=1"},
	}
}

func (s *suite) run(t *testing.T, rt backend.Runtime, spec backend.ContainerSpec) backend.Container {
	t.Helper()
	c, err := rt.Run(s.ctx(t), spec)
	if err != nil {
		t.Fatalf("Run %s: %v", spec.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = rt.Remove(ctx, c.ID, 0)
	})
	return c
}

func (s *suite) runInspect(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	c := s.run(t, rt, spec)
	if c.ID == "" || c.State != backend.Running {
		t.Fatalf("Run returned %+v; want an id and state running", c)
	}
	if c.Port != spec.Port {
		t.Errorf("Run: port %d, want the spec's %d (the backend keeps it)", c.Port, spec.Port)
	}
	for _, by := range []string{c.ID, spec.Name} {
		got, err := rt.Inspect(s.ctx(t), by)
		if err != nil {
			t.Fatalf("Inspect(%s): %v", by, err)
		}
		if got.ID != c.ID || got.Name != spec.Name || got.State != backend.Running || got.Port != spec.Port || got.Partial {
			t.Errorf("Inspect(%s) = id %s name %s state %s port %d partial %v; want %s %s running %d complete",
				by, got.ID, got.Name, got.State, got.Port, got.Partial, c.ID, spec.Name, spec.Port)
		}
		for k, v := range spec.Labels {
			if got.Labels[k] != v {
				t.Errorf("Inspect(%s): label %s = %q, want %q", by, k, got.Labels[k], v)
			}
		}
		if got.StartedAt.IsZero() || got.Created.IsZero() {
			t.Errorf("Inspect(%s): no start or create time", by)
		}
	}
	if _, err := rt.Inspect(s.ctx(t), "spawnd-conformance-absent"); !errdefs.IsNotFound(err) {
		t.Errorf("Inspect of an absent container: %v, want not-found", err)
	}
	if err := rt.CheckImage(s.ctx(t), s.h.Image); err != nil {
		t.Errorf("CheckImage(%s): %v", s.h.Image, err)
	}
	if err := rt.CheckImage(s.ctx(t), "spawnd-conformance/absent:0"); !errdefs.IsNotFound(err) {
		t.Errorf("CheckImage of an absent image: %v, want not-found", err)
	}
}

func (s *suite) conflict(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	first := s.run(t, rt, spec)
	_, err := rt.Run(s.ctx(t), spec)
	if !errdefs.IsConflict(err) {
		t.Fatalf("a second Run with the name %s: %v, want a conflict", spec.Name, err)
	}
	cs, err := rt.List(s.ctx(t), spec.Labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].ID != first.ID {
		t.Errorf("after the conflict the engine holds %d containers of the run, want only the first", len(cs))
	}
}

func (s *suite) missingImage(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	spec.Image = "spawnd-conformance/absent:0"
	if _, err := rt.Run(s.ctx(t), spec); err == nil {
		t.Fatal("Run of an absent image succeeded")
	}
	cs, err := rt.List(s.ctx(t), spec.Labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 0 {
		t.Errorf("a failed Run left %d containers", len(cs))
	}
}

func (s *suite) list(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	c := s.run(t, rt, spec)
	cs, err := rt.List(s.ctx(t), spec.Labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].ID != c.ID || cs[0].State != backend.Running || cs[0].Name != spec.Name {
		t.Fatalf("List by the run's labels = %+v, want the one running container", cs)
	}
	if cs[0].Port != spec.Port {
		t.Errorf("List: port %d, want %d", cs[0].Port, spec.Port)
	}
	other := map[string]string{labels.Conformance: "none-such"}
	if cs, err := rt.List(s.ctx(t), other); err != nil || len(cs) != 0 {
		t.Errorf("List by a label nobody has = %d containers, %v; want none", len(cs), err)
	}
}

// waitEvent reads events until one for id with action arrives.
func waitEvent(t *testing.T, evs <-chan backend.ContainerEvent, errs <-chan error, id, action string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case ev := <-evs:
			if ev.ID == id && ev.Action == action {
				return
			}
		case err := <-errs:
			t.Fatalf("the event stream broke waiting for %s of %s: %v", action, id, err)
		case <-deadline:
			t.Fatalf("no %s event for %s within 30 s", action, id)
		}
	}
}

func (s *suite) events(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	ctx, cancel := context.WithCancel(s.ctx(t))
	defer cancel()
	evs, errs := rt.Events(ctx, spec.Labels)
	time.Sleep(100 * time.Millisecond) // let the subscription reach the engine
	c := s.run(t, rt, spec)
	waitEvent(t, evs, errs, c.ID, "start")
	if err := rt.Remove(s.ctx(t), c.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, evs, errs, c.ID, "destroy")
}

func (s *suite) exitCode(t *testing.T) {
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.ExitWith(3))
	ctx, cancel := context.WithCancel(s.ctx(t))
	defer cancel()
	evs, errs := rt.Events(ctx, spec.Labels)
	time.Sleep(100 * time.Millisecond)
	c := s.run(t, rt, spec)
	if s.h.Exit != nil {
		s.h.Exit(c.ID, 3)
	}
	waitEvent(t, evs, errs, c.ID, "die")
	got, err := rt.Inspect(s.ctx(t), c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != backend.Exited || got.ExitCode != 3 || got.OOMKilled {
		t.Errorf("after exit 3: state %s code %d oom %v; want exited 3 false", got.State, got.ExitCode, got.OOMKilled)
	}
	cs, err := rt.List(s.ctx(t), spec.Labels)
	if err != nil || len(cs) != 1 || cs[0].State != backend.Exited {
		t.Errorf("List after the exit = %+v, %v; want the exited container", cs, err)
	}
}

func (s *suite) remove(t *testing.T) {
	rt, _ := s.h.New(t)
	c := s.run(t, rt, s.spec(t, s.h.Serve))
	for i := 0; i < 2; i++ {
		if err := rt.Remove(s.ctx(t), c.ID, time.Second); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if _, err := rt.Inspect(s.ctx(t), c.ID); !errdefs.IsNotFound(err) {
		t.Errorf("Inspect after Remove: %v, want not-found", err)
	}
}

// adopt: a restarted daemon finds the running container, its labels and
// port, by listing with the labels alone.
func (s *suite) adopt(t *testing.T) {
	rt, restarted := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	c := s.run(t, rt, spec)
	cs, err := restarted.List(s.ctx(t), spec.Labels)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].ID != c.ID || cs[0].Port != spec.Port || cs[0].State != backend.Running {
		t.Fatalf("a restarted backend lists %+v, want the running container with port %d", cs, spec.Port)
	}
	got, err := restarted.Inspect(s.ctx(t), cs[0].ID)
	if err != nil || got.IP == "" && got.HostPort == 0 {
		t.Errorf("a restarted backend's inspect: %+v, %v; want an address to reach the server", got, err)
	}
}

// halfMade: a container made and never started lists as Created, and
// Remove takes it away (what the core's reaper does).
func (s *suite) halfMade(t *testing.T) {
	if s.h.MakeHalf == nil {
		t.Fatal("the harness must give MakeHalf: the reaper depends on this part of the contract")
	}
	rt, _ := s.h.New(t)
	spec := s.spec(t, s.h.Serve)
	id := s.h.MakeHalf(t, spec)
	cs, err := rt.List(s.ctx(t), spec.Labels)
	if err != nil || len(cs) != 1 || cs[0].ID != id || cs[0].State != backend.Created {
		t.Fatalf("List of a half-made container = %+v, %v; want it created", cs, err)
	}
	if err := rt.Remove(s.ctx(t), id, 0); err != nil {
		t.Fatal(err)
	}
	if cs, err := rt.List(s.ctx(t), spec.Labels); err != nil || len(cs) != 0 {
		t.Errorf("after Remove, List = %d containers, %v", len(cs), err)
	}
}
