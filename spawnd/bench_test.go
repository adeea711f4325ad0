package spawnd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
)

func benchManager(b *testing.B, rt *fakeRuntime) *Manager {
	b.Helper()
	cfg := Config{Instance: "bench", HomesRoot: b.TempDir(),
		Envs: map[string]EnvConfig{"team": {Image: "img:1", User: EnvUser{Name: "jovyan", UID: testUID(), GID: 100}}}, ReapGrace: time.Hour}
	m, err := NewManager(cfg, rt, nil, nil)
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
	m := benchManager(b, newFake())
	for i := range 100 {
		if _, err := m.Start(context.Background(), fmt.Sprintf("u%03d", i), "", api.StartRequest{}); err != nil {
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
	m := benchManager(b, newFake())
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Start(ctx, "alice", "", api.StartRequest{}); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Stop(ctx, "alice", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReconcile300 is a full reconcile of 300 containers, engine excluded.
func BenchmarkReconcile300(b *testing.B) {
	rt := newFake()
	for i := range 300 {
		rt.add(Container{ID: fmt.Sprintf("c%03d", i), State: EngineRunning, HostPort: 40000 + i,
			Labels: map[string]string{LabelManaged: "true", LabelInstance: "bench", LabelUser: fmt.Sprintf("u%03d", i), LabelPort: "8888"}})
	}
	m := benchManager(b, rt)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.Reconcile(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
