// Package fakebackend is an in-memory backend.Runtime: one fake for the
// core's unit tests and for the benchmarks that measure the core without an
// engine. It keeps the lifecycle contract (spawnd/backend/backendtest runs
// against it), so a test that passes on it says something about the core,
// and it has hooks to make an engine misbehave at a chosen moment.
package fakebackend

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Runtime is the fake. Set hooks before use.
type Runtime struct {
	mu         sync.Mutex
	containers map[string]*backend.Container
	specs      map[string]backend.ContainerSpec
	images     map[string]string
	logs       map[string][]string // container id -> lines, each ending in "\n"
	seq        int

	// Runs counts Run calls; Removes counts Remove calls.
	Runs, Removes atomic.Int32
	// BeforeRun is called at the start of every Run, outside the fake's lock.
	BeforeRun func()
	// OnRunning is called once Run made a container run, before Run
	// returns (the moment between the engine's start and its answer).
	OnRunning func(id string)
	// AfterRun is called when Run returns.
	AfterRun func(id string)
	// Waiting, when set, is said to a spec's Waiting hook by Run, as a
	// backend that places containers says what it waits for.
	Waiting string
	// RunErr makes Run create the container and then fail to start it (the
	// container is removed again, as the contract says).
	RunErr error

	events    chan backend.ContainerEvent
	eventsErr chan error
}

var _ backend.Runtime = (*Runtime)(nil)

// New returns an empty fake that holds the images "img:1" and "img:2".
func New() *Runtime {
	return &Runtime{
		containers: map[string]*backend.Container{},
		specs:      map[string]backend.ContainerSpec{},
		images:     map[string]string{"img:1": "sha256:aaa", "img:2": "sha256:bbb"},
		logs:       map[string][]string{},
		events:     make(chan backend.ContainerEvent, 100),
		eventsErr:  make(chan error, 1),
	}
}

// Info implements backend.Runtime.
func (f *Runtime) Info(context.Context) (backend.Info, error) {
	return backend.Info{Backend: "fake", Version: "0"}, nil
}

// CheckImage implements backend.Runtime.
func (f *Runtime) CheckImage(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.images[ref]; ok {
		return nil
	}
	return errdefs.ErrNotFound.WithMessage("no such image " + ref)
}

// EnsureNetwork implements backend.Runtime.
func (f *Runtime) EnsureNetwork(context.Context, backend.NetworkSpec) (backend.NetworkInfo, error) {
	return backend.NetworkInfo{Gateway: "172.31.0.1", Bridge: "br-fake"}, nil
}

// Run implements backend.Runtime.
func (f *Runtime) Run(_ context.Context, s backend.ContainerSpec) (backend.Container, error) {
	f.Runs.Add(1)
	if f.BeforeRun != nil {
		f.BeforeRun()
	}
	f.mu.Lock()
	if _, ok := f.images[s.Image]; !ok {
		f.mu.Unlock()
		return backend.Container{}, errdefs.ErrNotFound.WithMessage("no such image " + s.Image)
	}
	for _, c := range f.containers {
		if c.Name == s.Name {
			f.mu.Unlock()
			return backend.Container{}, errdefs.ErrConflict.WithMessage("the name " + s.Name + " is in use")
		}
	}
	f.seq++
	id := fmt.Sprintf("c%063d", f.seq)
	if f.AfterRun != nil {
		defer f.AfterRun(id)
	}
	if f.Waiting != "" && s.Waiting != nil {
		s.Waiting(f.Waiting)
	}
	if f.RunErr != nil {
		f.mu.Unlock()
		return backend.Container{}, f.RunErr
	}
	f.specs[id] = s
	c := &backend.Container{ID: id, Name: s.Name, Labels: s.Labels, State: backend.Running, Created: time.Now(), StartedAt: time.Now(),
		Image: s.Image, ImageID: f.images[s.Image], Port: s.Port, IP: fmt.Sprintf("172.31.%d.%d", f.seq/250, 2+f.seq%250)}
	if s.PublishIP != "" {
		c.HostPort = 40000 + f.seq
	}
	f.containers[id] = c
	out := *c
	f.mu.Unlock()
	if f.OnRunning != nil {
		f.OnRunning(id)
	}
	f.emit(id, "start")
	return out, nil
}

// emit sends an event if a reader keeps up; a fake never blocks its caller.
func (f *Runtime) emit(id, action string) {
	select {
	case f.events <- backend.ContainerEvent{ID: id, Action: action}:
	default:
	}
}

// Inspect implements backend.Runtime.
func (f *Runtime) Inspect(_ context.Context, idOrName string) (backend.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.containers {
		if c.ID == idOrName || c.Name == idOrName {
			return *c, nil
		}
	}
	return backend.Container{}, errdefs.ErrNotFound.WithMessage("no such container " + idOrName)
}

// Logs implements backend.Runtime.
func (f *Runtime) Logs(_ context.Context, id string, tail int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[id]; !ok {
		return "", errdefs.ErrNotFound.WithMessage("no such container " + id)
	}
	lines := f.logs[id]
	if len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	return strings.Join(lines, ""), nil
}

// Remove implements backend.Runtime.
func (f *Runtime) Remove(_ context.Context, id string, _ time.Duration) error {
	f.Removes.Add(1)
	f.mu.Lock()
	_, ok := f.containers[id]
	delete(f.containers, id)
	f.mu.Unlock()
	if ok {
		f.emit(id, "destroy")
	}
	return nil
}

// List implements backend.Runtime. Like the Docker engine's listing, it
// returns partial containers: no start time, exit code or OOM flag.
func (f *Runtime) List(_ context.Context, labels map[string]string) ([]backend.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []backend.Container
next:
	for _, c := range f.containers {
		for k, v := range labels {
			if c.Labels[k] != v {
				continue next
			}
		}
		p := *c
		p.Partial, p.StartedAt, p.FinishedAt, p.ExitCode, p.OOMKilled, p.Error = true, time.Time{}, time.Time{}, 0, false, ""
		out = append(out, p)
	}
	return out, nil
}

// Events implements backend.Runtime: every caller shares one stream.
func (f *Runtime) Events(context.Context, map[string]string) (<-chan backend.ContainerEvent, <-chan error) {
	return f.events, f.eventsErr
}

// Exit makes a running container exit as an engine would, and emits the
// die event.
func (f *Runtime) Exit(id string, code int, oom bool) {
	f.mu.Lock()
	c := f.containers[id]
	c.State, c.ExitCode, c.OOMKilled, c.FinishedAt = backend.Exited, code, oom, time.Now()
	f.mu.Unlock()
	f.events <- backend.ContainerEvent{ID: id, Action: "die"}
}

// PendingEvents is how many events wait for the daemon to read them.
func (f *Runtime) PendingEvents() int { return len(f.events) }

// BreakEvents ends the event stream with err, as an engine restart would.
func (f *Runtime) BreakEvents(err error) { f.eventsErr <- err }

// Vanish takes a container away without an event, as an engine that lost
// it while the daemon was not listening.
func (f *Runtime) Vanish(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
}

// Reset forgets every container (images stay), without events: the
// memory benchmark measures the fake's own records this way.
func (f *Runtime) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers = map[string]*backend.Container{}
	f.specs = map[string]backend.ContainerSpec{}
	f.logs = map[string][]string{}
}

// Count is how many containers the fake holds.
func (f *Runtime) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.containers)
}

// Add puts a container on the fake directly (as if an earlier daemon made it).
func (f *Runtime) Add(c backend.Container) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cc := c
	f.containers[c.ID] = &cc
}

// Update changes a container in place under the fake's lock.
func (f *Runtime) Update(id string, fn func(c *backend.Container)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[id]; ok {
		fn(c)
	}
}

// Spec is the spec a container was run from.
func (f *Runtime) Spec(id string) backend.ContainerSpec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.specs[id]
}

// SetImage adds (id != "") or removes (id == "") an image.
func (f *Runtime) SetImage(ref, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id == "" {
		delete(f.images, ref)
		return
	}
	f.images[ref] = id
}

// Log appends lines to a container's log.
func (f *Runtime) Log(id string, lines ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range lines {
		f.logs[id] = append(f.logs[id], strings.TrimSuffix(l, "\n")+"\n")
	}
}

// Locked runs fn under the fake's lock (to hold the engine still).
func (f *Runtime) Locked(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}
