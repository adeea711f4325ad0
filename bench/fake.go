package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/spawnd/spawnd/spawnd"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

// heapPerServer starts n servers on an in-memory runtime and returns the
// daemon's heap growth per server in KB (the runtime's own records excluded).
func heapPerServer(n int) float64 {
	homes, err := os.MkdirTemp("", "spawnd-bench-heap-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(homes)
	cfg := spawnd.Config{Instance: "heap", HomesRoot: homes,
		Envs: map[string]spawnd.EnvConfig{"team": {Image: "img:1", User: spawnd.EnvUser{Name: "jovyan", UID: os.Getuid() + 1, GID: 100}}}}
	if os.Getuid() == 0 {
		cfg.Envs["team"] = spawnd.EnvConfig{Image: "img:1", User: spawnd.EnvUser{Name: "jovyan", UID: 1000, GID: 100}}
	}
	rt := fakebackend.New() // the fake the core's unit tests use
	m, err := spawnd.NewManager(cfg, backend.Set{Runtime: rt}, nil, nil)
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
		if _, err := m.Start(ctx, fmt.Sprintf("user%04d", i), "", spawnd.StartRequest{}); err != nil {
			log.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // readiness probes finish
	after := measure()
	// Subtract the fake's own records: drop them and measure again.
	rt.Reset()
	without := measure()
	rtBytes = after - without
	m.Close()
	return float64(after-before-rtBytes) / float64(n) / 1024
}

// countingInspects counts the inspects a runtime is asked for.
type countingInspects struct {
	backend.Runtime
	n atomic.Int64
}

func (c *countingInspects) Inspect(ctx context.Context, id string) (backend.Container, error) {
	c.n.Add(1)
	return c.Runtime.Inspect(ctx, id)
}
