package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd"
)

// TestProfilesForRealWorkloads: a profile's shm_size, memory and CPU
// reservations reach the container as the engine and the kernel see them;
// a GPU profile on this engine (no NVIDIA runtime) fails its start with
// words a user can act on, and leaves no container.
func TestProfilesForRealWorkloads(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	cfg.Profiles = map[string]spawnd.ProfileConfig{
		"default": {Memory: "256m", CPUs: 1, Pids: 128},
		"ml":      {Memory: "512m", CPUs: 1, Pids: 128, ShmSize: "300m", MemoryReservation: "128m", CPUReservation: 0.5},
		"gpu":     {Memory: "256m", CPUs: 1, Pids: 128, GPUs: "all"},
	}
	cfg.Teams = map[string]spawnd.TeamConfig{"ml": {Groups: []string{"ml"}, Profiles: []string{"ml", "gpu"}}}
	h := startDaemon(t, eng, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s, err := h.client.Start(ctx, "mia", "", api.StartRequest{Profile: "ml", Groups: []string{"ml"},
		Cmd: []string{"sh", "-c", `echo "shm $(df -k /dev/shm | tail -1)"; exec httpd -f -p 8888 -h /tmp`}})
	if err != nil {
		t.Fatal(err)
	}
	ins, err := testenv.Client(eng).ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := ins.Container.HostConfig
	if hc.ShmSize != 300<<20 || hc.MemoryReservation != 128<<20 || hc.CPUShares != 512 || hc.Memory != 512<<20 {
		t.Errorf("host config: shm %d, memory reservation %d, cpu shares %d, memory %d; want %d, %d, 512, %d",
			hc.ShmSize, hc.MemoryReservation, hc.CPUShares, hc.Memory, 300<<20, 128<<20, 512<<20)
	}
	var out string
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out, "shm "); time.Sleep(200 * time.Millisecond) {
		if out, err = h.client.Logs(ctx, "mia", "", 10); err != nil || time.Now().After(deadline) {
			t.Fatalf("the server's log never showed its /dev/shm: %q %v", out, err)
		}
	}
	if !strings.Contains(out, " 307200 ") { // df -k: 300 MiB in 1K blocks
		t.Errorf("/dev/shm inside the server: %q; want 307200 1K-blocks", out)
	}

	_, err = h.client.Start(ctx, "gus", "", api.StartRequest{Profile: "gpu", Groups: []string{"ml"}})
	if err == nil || !strings.Contains(err.Error(), "no GPUs") || !strings.Contains(err.Error(), "choose a profile without GPUs") {
		t.Fatalf("a GPU profile on an engine without a GPU runtime: %v; want an error that says there are no GPUs", err)
	}
	if api.ErrorCode(err) != api.CodeUnavailable {
		t.Errorf("code %q; want %q", api.ErrorCode(err), api.CodeUnavailable)
	}
	if _, err := testenv.Client(eng).ContainerInspect(ctx, spawnd.ContainerName(cfg.Instance, "gus", ""), client.ContainerInspectOptions{}); err == nil {
		t.Errorf("the refused GPU start left its container")
	}
	t.Logf("the GPU start's error: %v", err)
}
