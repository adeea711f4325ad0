package spawnd

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
)

// fakeRuntime is an in-memory engine for unit tests of the lifecycle rules.
type fakeRuntime struct {
	mu         sync.Mutex
	containers map[string]*Container
	specs      map[string]ContainerSpec
	images     map[string]string
	seq        int
	creates    atomic.Int32
	starts     atomic.Int32
	removes    atomic.Int32
	createHook func()          // called inside Create, before it returns
	startHook  func(id string) // called after Start made a container run, under the fake's lock
	afterStart func(id string) // called when Start returns
	startErr   error
	events     chan Event
	eventsErr  chan error
	logs       map[string][]string // container id -> lines, each ending in "\n"
}

func newFake() *fakeRuntime {
	return &fakeRuntime{
		containers: map[string]*Container{},
		specs:      map[string]ContainerSpec{},
		images:     map[string]string{"img:1": "sha256:aaa", "img:2": "sha256:bbb"},
		events:     make(chan Event, 100),
		logs:       map[string][]string{},
		eventsErr:  make(chan error, 1),
	}
}

func (f *fakeRuntime) ImageID(_ context.Context, ref string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := f.images[ref]; ok {
		return id, nil
	}
	return "", errdefs.ErrNotFound.WithMessage("no such image " + ref)
}

func (f *fakeRuntime) EnsureNetwork(context.Context, NetworkSpec) (NetworkInfo, error) {
	return NetworkInfo{Gateway: "172.31.0.1", Bridge: "br-fake"}, nil
}

func (f *fakeRuntime) Create(_ context.Context, s ContainerSpec) (string, error) {
	f.creates.Add(1)
	if f.createHook != nil {
		f.createHook()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if c.Name == s.Name {
			return "", errdefs.ErrConflict.WithMessage("name in use")
		}
	}
	f.seq++
	id := fmt.Sprintf("c%062d", f.seq)
	f.specs[id] = s
	f.containers[id] = &Container{ID: id, Name: s.Name, Labels: s.Labels, State: EngineCreated, Created: time.Now(), Image: s.Image, ImageID: f.images[s.Image]}
	return id, nil
}

func (f *fakeRuntime) Start(_ context.Context, id string) error {
	f.starts.Add(1)
	if f.afterStart != nil {
		defer f.afterStart(id)
	}
	if f.startErr != nil {
		return f.startErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return errdefs.ErrNotFound
	}
	c.State, c.StartedAt, c.HostPort = EngineRunning, time.Now(), 40000+f.seq
	if f.startHook != nil {
		f.startHook(id)
	}
	return nil
}

func (f *fakeRuntime) Inspect(_ context.Context, idOrName string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if c.ID == idOrName || c.Name == idOrName {
			return *c, nil
		}
	}
	return Container{}, errdefs.ErrNotFound.WithMessage("no such container")
}

func (f *fakeRuntime) Logs(_ context.Context, id string, tail int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[id]; !ok {
		return "", errdefs.ErrNotFound.WithMessage("no such container")
	}
	lines := f.logs[id]
	if len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	return strings.Join(lines, ""), nil
}

func (f *fakeRuntime) Remove(_ context.Context, id string, _ time.Duration) error {
	f.removes.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
	return nil
}

func (f *fakeRuntime) List(_ context.Context, labels map[string]string) ([]Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Container
next:
	for _, c := range f.containers {
		for k, v := range labels {
			if c.Labels[k] != v {
				continue next
			}
		}
		// Like the Docker engine's listing: no start time, exit code or OOM.
		p := *c
		p.Partial, p.StartedAt, p.FinishedAt, p.ExitCode, p.OOMKilled, p.Error = true, time.Time{}, time.Time{}, 0, false, ""
		out = append(out, p)
	}
	return out, nil
}

func (f *fakeRuntime) Events(ctx context.Context, _ map[string]string) (<-chan Event, <-chan error) {
	return f.events, f.eventsErr
}

// exit makes a container exit as the engine would, and emits the die event.
func (f *fakeRuntime) exit(id string, code int, oom bool) {
	f.mu.Lock()
	c := f.containers[id]
	c.State, c.ExitCode, c.OOMKilled, c.FinishedAt = EngineExited, code, oom, time.Now()
	f.mu.Unlock()
	f.events <- Event{ID: id, Action: "die"}
}

func (f *fakeRuntime) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.containers)
}

// add puts a container on the fake engine directly (as if made by an earlier daemon).
func (f *fakeRuntime) add(c Container) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cc := c
	f.containers[c.ID] = &cc
}

func (f *fakeRuntime) spec(id string) ContainerSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.specs[id]
}
