package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/spawnd"
)

// memRuntime is an in-memory engine, to measure the daemon's own memory per
// server without 1,000 real containers.
type memRuntime struct {
	mu  sync.Mutex
	seq int
	cs  map[string]*spawnd.Container
}

func (m *memRuntime) ImageID(context.Context, string) (string, error) { return "sha256:x", nil }
func (m *memRuntime) EnsureNetwork(context.Context, spawnd.NetworkSpec) (spawnd.NetworkInfo, error) {
	return spawnd.NetworkInfo{Gateway: "172.31.0.1", Bridge: "br-mem"}, nil
}

func (m *memRuntime) Create(_ context.Context, s spawnd.ContainerSpec) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	id := fmt.Sprintf("%064d", m.seq)
	m.cs[id] = &spawnd.Container{ID: id, Name: s.Name, Labels: s.Labels, State: spawnd.EngineCreated, Created: time.Now(), Image: s.Image}
	return id, nil
}

func (m *memRuntime) Start(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.cs[id]
	c.State, c.StartedAt, c.HostPort, c.IP = spawnd.EngineRunning, time.Now(), 40000, "172.31.0.2"
	return nil
}

func (m *memRuntime) Inspect(_ context.Context, id string) (spawnd.Container, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.cs[id]; ok {
		return *c, nil
	}
	return spawnd.Container{}, errdefs.ErrNotFound
}

func (m *memRuntime) Logs(context.Context, string, int) (string, error) { return "", nil }

func (m *memRuntime) Remove(_ context.Context, id string, _ time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cs, id)
	return nil
}

func (m *memRuntime) List(context.Context, map[string]string) ([]spawnd.Container, error) {
	return nil, nil
}

func (m *memRuntime) Events(ctx context.Context, _ map[string]string) (<-chan spawnd.Event, <-chan error) {
	return make(chan spawnd.Event), make(chan error)
}

// heapPerServer starts n servers on an in-memory runtime and returns the
// daemon's heap growth per server in KB (the runtime's own records excluded).
func heapPerServer(n int) float64 {
	homes, err := os.MkdirTemp("", "spawnd-bench-heap-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(homes)
	cfg := spawnd.Config{Instance: "heap", HomesRoot: homes,
		Envs: map[string]spawnd.EnvConfig{"team": {Image: "img", User: spawnd.EnvUser{Name: "jovyan", UID: os.Getuid() + 1, GID: 100}}}}
	if os.Getuid() == 0 {
		cfg.Envs["team"] = spawnd.EnvConfig{Image: "img", User: spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}}
	}
	rt := &memRuntime{cs: map[string]*spawnd.Container{}}
	m, err := spawnd.NewManager(cfg, rt, nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	m.Dial = func(context.Context, string) error { return nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	<-m.Synced()
	measure := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := measure()
	var rtBytes uint64
	for i := range n {
		if _, err := m.Start(ctx, fmt.Sprintf("user%04d", i), "", api.StartRequest{}); err != nil {
			log.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // readiness probes finish
	after := measure()
	// Subtract the in-memory runtime's own records: measure them alone.
	rt.mu.Lock()
	saved := rt.cs
	rt.cs = nil
	rt.mu.Unlock()
	without := measure()
	rtBytes = after - without
	rt.mu.Lock()
	rt.cs = saved
	rt.mu.Unlock()
	m.Close()
	return float64(after-before-rtBytes) / float64(n) / 1024
}

// countingInspects counts the inspects a runtime is asked for.
type countingInspects struct {
	spawnd.Runtime
	n atomic.Int64
}

func (c *countingInspects) Inspect(ctx context.Context, id string) (spawnd.Container, error) {
	c.n.Add(1)
	return c.Runtime.Inspect(ctx, id)
}
