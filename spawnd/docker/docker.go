// Package docker is the Docker Engine backend (spawnd/backend): the only
// package that imports the engine client (github.com/moby/moby/client) apart
// from test helpers. It translates a backend.ContainerSpec into an engine
// create request with the hardening that is never optional, and engine
// answers back into backend.Container; it builds env images, and moves images
// in and out of the engine with go-containerregistry's daemon package.
package docker

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/engineapi"
)

// Engine is the backend on one Docker engine.
type Engine struct {
	cli *client.Client
}

var (
	_ backend.Runtime    = (*Engine)(nil)
	_ backend.Builder    = (*Engine)(nil)
	_ backend.ImageStore = (*Engine)(nil)
)

// New connects to the engine at host ("" = DOCKER_HOST or the default socket)
// with API version negotiation, so the client speaks the engine's version
// (1.41 on Debian's 20.10) or the newest both know.
func New(host string) (*Engine, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("creating the engine client: %w", err)
	}
	return &Engine{cli: cli}, nil
}

// Host is the engine's address (unix:///var/run/docker.sock, ...), for
// messages and for test helpers that open their own client to check what
// the engine really did.
func (e *Engine) Host() string { return e.cli.DaemonHost() }

// Close releases the client's connections.
func (e *Engine) Close() error { return e.cli.Close() }

// Ping checks that the engine answers.
func (e *Engine) Ping(ctx context.Context) error {
	_, err := e.cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	return err
}

// CheckImage implements backend.Runtime: the image must be on this engine.
func (e *Engine) CheckImage(ctx context.Context, ref string) error {
	if _, err := e.cli.ImageInspect(ctx, ref); err != nil {
		return fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	return nil
}

// EnsureNetwork implements backend.Runtime.
func (e *Engine) EnsureNetwork(ctx context.Context, n backend.NetworkSpec) (backend.NetworkInfo, error) {
	res, err := e.cli.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{})
	if errdefs.IsNotFound(err) {
		_, err = e.cli.NetworkCreate(ctx, n.Name, client.NetworkCreateOptions{
			Driver:  "bridge",
			Options: map[string]string{"com.docker.network.bridge.enable_icc": strconv.FormatBool(n.ICC)},
			Labels:  n.Labels,
		})
		if err != nil && !errdefs.IsConflict(err) {
			return backend.NetworkInfo{}, fmt.Errorf("creating network %s: %w", n.Name, err)
		}
		res, err = e.cli.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{})
	}
	if err != nil {
		return backend.NetworkInfo{}, fmt.Errorf("inspecting network %s: %w", n.Name, err)
	}
	if err := checkNetwork(n, res.Network.Driver, res.Network.Options); err != nil {
		return backend.NetworkInfo{}, err
	}
	// A bridge network's Linux bridge is named by an option, or else br-<id[:12]>.
	info := backend.NetworkInfo{Bridge: res.Network.Options["com.docker.network.bridge.name"]}
	if info.Bridge == "" && res.Network.Driver == "bridge" && len(res.Network.ID) >= 12 {
		info.Bridge = "br-" + res.Network.ID[:12]
	}
	for _, c := range res.Network.IPAM.Config {
		if c.Gateway.IsValid() {
			info.Gateway = c.Gateway.String()
			break
		}
	}
	return info, nil
}

// Run implements backend.Runtime: create, start, inspect. A container whose
// start or first inspect fails is removed again. Every container gets: all
// capabilities dropped, no-new-privileges, an init as PID 1 (signals and
// zombies handled, fast stops), memory without extra swap, and the pids limit.
func (e *Engine) Run(ctx context.Context, s backend.ContainerSpec) (backend.Container, error) {
	id, err := e.create(ctx, s)
	if err != nil {
		return backend.Container{}, err
	}
	if _, err := e.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		e.removeQuietly(ctx, id)
		err = fmt.Errorf("starting container %s: %w", s.Name, err)
		if s.GPUs != nil && strings.Contains(err.Error(), "could not select device driver") {
			// The engine has no GPU runtime (the NVIDIA Container Toolkit).
			return backend.Container{}, &backend.Unplaceable{Err: err,
				Reason: fmt.Sprintf("this machine has no GPUs for servers (the profile asks for gpus: %s, and the engine has no NVIDIA runtime); choose a profile without GPUs, or ask an admin", s.GPUs)}
		}
		return backend.Container{}, err
	}
	c, err := e.Inspect(ctx, id)
	if err != nil {
		e.removeQuietly(ctx, id)
		return backend.Container{}, err
	}
	return c, nil
}

// removeQuietly removes a container Run made and could not finish; the
// caller reports the error that made it give up.
func (e *Engine) removeQuietly(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = e.Remove(rctx, id, 0)
}

func (e *Engine) create(ctx context.Context, s backend.ContainerSpec) (string, error) {
	if len(s.Placement) > 0 {
		return "", fmt.Errorf("placement %v: one engine has no nodes to choose among (placement needs engine.backend: swarm): %w",
			s.Placement, errdefs.ErrInvalidArgument)
	}
	port, ok := network.PortFrom(uint16(s.Port), network.TCP)
	if !ok {
		return "", fmt.Errorf("invalid port %d", s.Port)
	}
	cfg := &container.Config{
		Image:        s.Image,
		Labels:       s.Labels,
		Env:          s.Env,
		Cmd:          s.Cmd,
		User:         s.User,
		WorkingDir:   s.WorkingDir,
		ExposedPorts: network.PortSet{port: {}},
	}
	init := true
	pids := s.PidsLimit
	hc := &container.HostConfig{
		NetworkMode: container.NetworkMode(s.Network),
		CapDrop:     []string{"ALL"},
		SecurityOpt: []string{"no-new-privileges:true"},
		Init:        &init,
		Resources: container.Resources{
			Memory:            s.Memory,
			MemoryReservation: s.MemoryReservation,
			NanoCPUs:          s.NanoCPUs,
			PidsLimit:         &pids,
		},
		ShmSize:   s.ShmSize,
		LogConfig: container.LogConfig{Type: "json-file", Config: map[string]string{"max-size": "10m", "max-file": "2"}},
	}
	hc.CPUShares = cpuShares(s)
	if g := s.GPUs; g != nil {
		// What docker run --gpus sends: any driver with the gpu capability.
		hc.DeviceRequests = []container.DeviceRequest{{Count: g.Count, DeviceIDs: g.DeviceIDs, Capabilities: [][]string{{"gpu"}}}}
		if len(g.DeviceIDs) > 0 {
			hc.DeviceRequests[0].Count = 0
		}
	}
	if s.Memory > 0 {
		hc.MemorySwap = s.Memory
	}
	for _, m := range s.Mounts {
		mm := mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly}
		if m.Late {
			mm.BindOptions = &mount.BindOptions{Propagation: mount.PropagationRSlave}
		}
		hc.Mounts = append(hc.Mounts, mm)
	}
	if s.PublishIP != "" {
		ip, err := netip.ParseAddr(s.PublishIP)
		if err != nil {
			return "", fmt.Errorf("invalid publish address %q: %w", s.PublishIP, err)
		}
		hc.PortBindings = network.PortMap{port: {{HostIP: ip, HostPort: ""}}}
	}
	res, err := e.cli.ContainerCreate(ctx, client.ContainerCreateOptions{Name: s.Name, Config: cfg, HostConfig: hc})
	if err != nil {
		return "", fmt.Errorf("creating container %s: %w", s.Name, err)
	}
	return res.ID, nil
}

// Logs implements backend.Runtime.
func (e *Engine) Logs(ctx context.Context, id string, tail int) (string, error) {
	rc, err := e.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return "", fmt.Errorf("reading the logs of container %s: %w", id, err)
	}
	defer rc.Close()
	out, err := engineapi.ReadLogs(rc)
	if err != nil {
		return out, fmt.Errorf("reading the logs of container %s: %w", id, err)
	}
	return out, nil
}

// FollowLogs writes a container's last tail log lines to w, then each one
// as it comes, until ctx ends or the container does.
func (e *Engine) FollowLogs(ctx context.Context, id string, tail int, w io.Writer) error {
	rc, err := e.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return fmt.Errorf("following the log of container %s: %w", id, err)
	}
	defer rc.Close()
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("following the log of container %s: %w", id, err)
	}
	return nil
}

// Inspect implements backend.Runtime.
func (e *Engine) Inspect(ctx context.Context, idOrName string) (backend.Container, error) {
	res, err := e.cli.ContainerInspect(ctx, idOrName, client.ContainerInspectOptions{})
	if err != nil {
		return backend.Container{}, fmt.Errorf("inspecting container %s: %w", idOrName, err)
	}
	return fromInspect(res.Container), nil
}

func fromInspect(in container.InspectResponse) backend.Container {
	c := backend.Container{ID: in.ID, Name: trimSlash(in.Name), ImageID: in.Image}
	c.Created, _ = time.Parse(time.RFC3339Nano, in.Created)
	if in.Config != nil {
		c.Labels = in.Config.Labels
		c.Image = in.Config.Image
	}
	if st := in.State; st != nil {
		c.State = backend.State(st.Status)
		c.ExitCode = st.ExitCode
		c.OOMKilled = st.OOMKilled
		c.Error = st.Error
		c.StartedAt = parseEngineTime(st.StartedAt)
		c.FinishedAt = parseEngineTime(st.FinishedAt)
	}
	if in.Config != nil {
		// The single-user port is the one port spawnd exposes (see create).
		for p := range in.Config.ExposedPorts {
			if p.Proto() == network.TCP {
				c.Port = int(p.Num())
			}
		}
	}
	if ns := in.NetworkSettings; ns != nil {
		for p, bindings := range ns.Ports {
			if int(p.Num()) != c.Port || p.Proto() != network.TCP {
				continue
			}
			for _, b := range bindings {
				if n, err := strconv.Atoi(b.HostPort); err == nil && n > 0 {
					c.HostPort = n
					break
				}
			}
		}
		for _, ep := range ns.Networks {
			if ep != nil && ep.IPAddress.IsValid() {
				c.IP = ep.IPAddress.String()
				break
			}
		}
	}
	return c
}

func parseEngineTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() < 1970 {
		return time.Time{}
	}
	return t
}

func trimSlash(s string) string {
	if len(s) > 0 && s[0] == '/' {
		return s[1:]
	}
	return s
}

// Remove implements backend.Runtime.
func (e *Engine) Remove(ctx context.Context, id string, grace time.Duration) error {
	if grace > 0 {
		secs := int((grace + time.Second - 1) / time.Second)
		_, err := e.cli.ContainerStop(ctx, id, client.ContainerStopOptions{Timeout: &secs})
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stopping container %s: %w", id, err)
		}
	}
	_, err := e.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	if err != nil && !errdefs.IsNotFound(err) {
		if errdefs.IsConflict(err) { // removal already in progress
			return nil
		}
		return fmt.Errorf("removing container %s: %w", id, err)
	}
	return nil
}

// List implements backend.Runtime with one listing and no inspect: the
// containers come back Partial (no start time, exit code or OOM flag), and
// the caller inspects the ones it needs. A reconcile of 300 containers is
// then one engine call.
func (e *Engine) List(ctx context.Context, labels map[string]string) ([]backend.Container, error) {
	f := client.Filters{}
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	out := make([]backend.Container, 0, len(res.Items))
	for _, it := range res.Items {
		c := backend.Container{ID: it.ID, Labels: it.Labels, State: backend.State(it.State), Image: it.Image, ImageID: it.ImageID,
			Created: time.Unix(it.Created, 0), Partial: true}
		if len(it.Names) > 0 {
			c.Name = trimSlash(it.Names[0])
		}
		// The listing names the exposed port (published or not): spawnd
		// exposes one, the single-user port.
		for _, p := range it.Ports {
			if p.Type == "tcp" {
				c.Port = int(p.PrivatePort)
				if p.PublicPort != 0 {
					c.HostPort = int(p.PublicPort)
				}
			}
		}
		if ns := it.NetworkSettings; ns != nil {
			for _, ep := range ns.Networks {
				if ep != nil && ep.IPAddress.IsValid() {
					c.IP = ep.IPAddress.String()
					break
				}
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// Events implements backend.Runtime.
func (e *Engine) Events(ctx context.Context, labels map[string]string) (<-chan backend.ContainerEvent, <-chan error) {
	f := client.Filters{}
	f.Add("type", string(events.ContainerEventType))
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	f.Add("event", "create", "start", "die", "destroy", "pause", "unpause", "restart")
	res := e.cli.Events(ctx, client.EventsListOptions{Filters: f})
	out := make(chan backend.ContainerEvent, 64)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-res.Err:
				if err == nil {
					err = fmt.Errorf("the engine closed the event stream")
				}
				errc <- err
				return
			case msg := <-res.Messages:
				ev := backend.ContainerEvent{ID: msg.Actor.ID, Action: string(msg.Action), Labels: msg.Actor.Attributes}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, errc
}

// CheckNetwork is for doctor: nil when the network is absent
// (spawnd will create it) or is what n says; else what is wrong and the fix.
func (e *Engine) CheckNetwork(ctx context.Context, n backend.NetworkSpec) error {
	res, err := e.cli.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{})
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting network %s: %w", n.Name, err)
	}
	return checkNetwork(n, res.Network.Driver, res.Network.Options)
}

// checkNetwork refuses a user network that is not what the config says: not
// a bridge of spawnd's own (Docker's default bridge, host, none, overlay), or
// one whose inter-container setting disagrees with network.icc. The error
// is an invalid-argument one, which the core treats as fatal.
func checkNetwork(n backend.NetworkSpec, driver string, opts map[string]string) error {
	if opts["com.docker.network.bridge.default_bridge"] == "true" || n.Name == "bridge" || n.Name == "host" || n.Name == "none" {
		return fmt.Errorf("network.name: %q is one of Docker's own networks, shared with every container on the engine; "+
			"name a network of spawnd's own, e.g. spawnd-users: %w", n.Name, errdefs.ErrInvalidArgument)
	}
	if driver != "bridge" {
		return fmt.Errorf("network.name: the network %q exists with driver %q, not bridge; remove it (docker network rm %s) "+
			"or name another network: %w", n.Name, driver, n.Name, errdefs.ErrInvalidArgument)
	}
	icc := true // Docker's default when the option is absent
	if v, ok := opts["com.docker.network.bridge.enable_icc"]; ok {
		icc, _ = strconv.ParseBool(v)
	}
	if icc != n.ICC {
		state := map[bool]string{true: "on", false: "off"}
		return fmt.Errorf("network.icc: the network %q exists with inter-container traffic %s, but network.icc says %s; "+
			"remove it once its servers are stopped (docker network rm %s; spawnd recreates it) or set network.icc: %v: %w",
			n.Name, state[icc], state[n.ICC], n.Name, icc, errdefs.ErrInvalidArgument)
	}
	return nil
}

// cpuShares is the CPU weight of a container: one engine reserves no CPU;
// shares weigh CPU time under contention (1024 = one CPU's worth, the
// engine's default weight; 0 leaves it). A Background container gets the
// lowest (2) until Promote.
func cpuShares(s backend.ContainerSpec) int64 {
	switch {
	case s.Background:
		return 2
	case s.CPUReservation > 0:
		return max(2, s.CPUReservation*1024/1e9)
	}
	return 0
}

// Promote implements backend.Set.Promote: the running container gets the
// CPU weight spec asks for (the engine's default when it asks none).
func (e *Engine) Promote(ctx context.Context, id string, spec backend.ContainerSpec) error {
	spec.Background = false
	shares := cpuShares(spec)
	if shares == 0 {
		shares = 1024
	}
	if _, err := e.cli.ContainerUpdate(ctx, id, client.ContainerUpdateOptions{Resources: &container.Resources{CPUShares: shares}}); err != nil {
		return fmt.Errorf("giving container %s its CPU weight: %w", id, err)
	}
	return nil
}
