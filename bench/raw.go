package main

import (
	"fmt"
	"log"
	"net/netip"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/backend"
)

// The raw floor talks to the engine with its client directly, never through
// spawnd's own engine adapter (spawnd/docker), so that an overhead in the
// adapter shows as an overhead and not on both sides. It asks the engine for
// the same container spawnd would make: the hardening, limits, bind-mounted
// home and published port.

// rawCreate creates and starts the container spec describes.
func (b *bench) rawCreate(spec backend.ContainerSpec) (string, error) {
	port, _ := network.ParsePort(strconv.Itoa(spec.Port) + "/tcp")
	cfg := &container.Config{Image: spec.Image, Env: spec.Env, User: spec.User, WorkingDir: spec.WorkingDir,
		Labels: spec.Labels, ExposedPorts: network.PortSet{port: {}}}
	init := true
	pids := spec.PidsLimit
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(spec.Network), Init: &init,
		CapDrop: []string{"ALL"}, SecurityOpt: []string{"no-new-privileges:true"},
		Resources:    container.Resources{Memory: spec.Memory, MemorySwap: spec.Memory, NanoCPUs: spec.NanoCPUs, PidsLimit: &pids},
		PortBindings: network.PortMap{port: {{HostIP: netip.MustParseAddr(spec.PublishIP)}}},
	}
	for _, m := range spec.Mounts {
		hc.Mounts = append(hc.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	cli := testenv.Client(b.eng)
	created, err := cli.ContainerCreate(b.ctx, client.ContainerCreateOptions{Name: spec.Name, Config: cfg, HostConfig: hc})
	if err != nil {
		return "", err
	}
	if _, err := cli.ContainerStart(b.ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return created.ID, err
	}
	return created.ID, nil
}

// rawPort is the host port the engine published for a raw container.
func (b *bench) rawPort(id string, port int) (int, error) {
	ins, err := testenv.Client(b.eng).ContainerInspect(b.ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return 0, err
	}
	p, _ := network.ParsePort(strconv.Itoa(port) + "/tcp")
	for _, bnd := range ins.Container.NetworkSettings.Ports[p] {
		if n, err := strconv.Atoi(bnd.HostPort); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("container %s publishes no port %d", id, port)
}

// rawInspect is one engine inspect (what a spawner without a daemon pays per poll).
func (b *bench) rawInspect(id string) error {
	_, err := testenv.Client(b.eng).ContainerInspect(b.ctx, id, client.ContainerInspectOptions{})
	return err
}

// rawRemove stops (SIGTERM, then SIGKILL after grace) and removes a container.
func (b *bench) rawRemove(id string, grace time.Duration) error {
	cli := testenv.Client(b.eng)
	secs := int(grace / time.Second)
	if _, err := cli.ContainerStop(b.ctx, id, client.ContainerStopOptions{Timeout: &secs}); err != nil {
		return err
	}
	_, err := cli.ContainerRemove(b.ctx, id, client.ContainerRemoveOptions{Force: true})
	return err
}

// rawStart creates and starts a container with the engine client and
// returns its id, the time create+start took, and its published port.
func (b *bench) rawStart(spec backend.ContainerSpec) (id string, took time.Duration, hostPort int) {
	began := time.Now()
	id, err := b.rawCreate(spec)
	if err != nil {
		log.Fatal(err)
	}
	took = time.Since(began)
	if hostPort, err = b.rawPort(id, spec.Port); err != nil {
		log.Fatal(err)
	}
	return id, took, hostPort
}
