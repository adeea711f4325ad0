package docker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/backend/backendtest"
	"github.com/spawnd/spawnd/spawnd/backends"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestConformance runs the backend contract on the real engine.
func TestConformance(t *testing.T) {
	eng := testenv.Engine(t)
	img := testenv.EnsureBusybox(t, eng)
	inst := testenv.Instance(t, eng)
	netName := "spawnd-" + inst
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := eng.EnsureNetwork(ctx, backend.NetworkSpec{Name: netName, ICC: false,
		Labels: map[string]string{"io.spawnd.instance": inst, testenv.TestLabel: "1"}}); err != nil {
		t.Fatal(err)
	}
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) (backend.Runtime, backend.Runtime) {
			restarted, err := docker.New(eng.Host())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { restarted.Close() })
			return eng, restarted
		},
		Image:      img,
		Port:       8888,
		Network:    netName,
		Serve:      []string{"httpd", "-f", "-p", "8888"},
		ExitWith:   func(code int) []string { return []string{"sh", "-c", fmt.Sprintf("sleep 1; exit %d", code)} },
		Labels:     map[string]string{"io.spawnd.instance": inst, testenv.TestLabel: "1"},
		Declares:   declared(t, eng.Host()),
		Print:      printLines,
		LocalImage: img,
		MakeHalf: func(t *testing.T, spec backend.ContainerSpec) string {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			port, _ := network.PortFrom(uint16(spec.Port), network.TCP)
			// The raw client makes what a crash between create and start leaves.
			res, err := testenv.Client(eng).ContainerCreate(ctx, client.ContainerCreateOptions{Name: spec.Name,
				Config:     &container.Config{Image: spec.Image, Cmd: spec.Cmd, Labels: spec.Labels, ExposedPorts: network.PortSet{port: {}}},
				HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(spec.Network)}})
			if err != nil {
				t.Fatal(err)
			}
			return res.ID
		},
	})
}

// declared is the Set the factory makes for the Docker backend at host.
func declared(t *testing.T, host string) backend.Set {
	_, set, err := backends.Local(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close() })
	return set
}

// printLines prints each line a second apart, then keeps running.
func printLines(lines ...string) []string {
	script := ""
	for _, l := range lines {
		script += fmt.Sprintf("echo %q; sleep 1; ", l)
	}
	return []string{"sh", "-c", script + "exec sleep 60"}
}
