package spawnd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spawnd/spawnd/labels"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/fakebackend"
)

func benchManager(b *testing.B, rt *fakebackend.Runtime) *Manager {
	b.Helper()
	cfg := Config{Instance: "bench", HomesRoot: b.TempDir(),
		Envs: map[string]EnvConfig{"team": {Image: "img:1", User: EnvUser{Name: "jovyan", UID: testUID(), GID: 100}}}, ReapGrace: time.Hour}
	m, err := NewManager(cfg, backend.Set{Runtime: rt}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	m.Dial = func(context.Context, string) error { return nil }
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	<-m.Synced()
	b.Cleanup(func() { cancel(); m.Close() })
	return m
}

// BenchmarkStatus is the cost of one status answer with 100 servers.
func BenchmarkStatus(b *testing.B) {
	m := benchManager(b, fakebackend.New())
	for i := range 100 {
		if _, err := m.Start(context.Background(), fmt.Sprintf("u%03d", i), "", StartRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := m.Status(fmt.Sprintf("u%03d", i%100), ""); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkStartStop is the core's own cost of a start and a stop.
func BenchmarkStartStop(b *testing.B) {
	m := benchManager(b, fakebackend.New())
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Start(ctx, "alice", "", StartRequest{}); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Stop(ctx, "alice", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReconcile300 is a full reconcile of 300 containers, engine excluded.
func BenchmarkReconcile300(b *testing.B) {
	rt := fakebackend.New()
	for i := range 300 {
		rt.Add(backend.Container{ID: fmt.Sprintf("c%03d", i), State: backend.Running, HostPort: 40000 + i,
			Labels: map[string]string{labels.Managed: "true", labels.Instance: "bench", labels.User: fmt.Sprintf("u%03d", i), labels.Port: "8888"}, Port: 8888})
	}
	m := benchManager(b, rt)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.Reconcile(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
