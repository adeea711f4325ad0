// Package swarm is the Docker Swarm backend (spawnd/backend): each user
// server is a Swarm service of one replica that is never restarted, placed
// by the swarm's scheduler on any node, named by its image's digest in a
// registry every node pulls from, and published in host mode on the node
// that runs it (no VIP: IPVS drops idle websockets after 900 s).
//
// A backend.Container is a service: its ID is the service's ID and its state
// is that of the service's newest task (new … starting are Created, running
// is Running, the ends are Exited with the task's exit code and error). The
// engine reports no task events, so Events polls the manager. Builds go to
// the manager's own engine (spawnd/docker).
package swarm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// Options configure the backend.
type Options struct {
	// Host is a manager's engine address ("" = DOCKER_HOST or the local socket).
	Host string
	// Registry is the registry every node pulls env images from
	// (host[:port]). An image reference without a registry (spawnd/team:…,
	// as `spawnd build` tags it) is looked up there, where
	// `spawnd image push ENV REGISTRY` put it.
	Registry string
	// Insecure lets the registry be plain HTTP (a registry on a private
	// network; every node's dockerd must list it in insecure-registries).
	Insecure bool
	// PendingTimeout is how long a server may wait for a node that can take
	// it (Swarm would retry forever); then it is removed with Swarm's
	// reason. Default 60s.
	PendingTimeout time.Duration
	// StopGrace is how long a stopping server has between SIGTERM and SIGKILL. Default 3s.
	StopGrace time.Duration
	// PollInterval is how often Events asks the manager for task states. Default 1s.
	PollInterval time.Duration
	// Keychain finds registry credentials. Default: authn.DefaultKeychain
	// (the daemon user's ~/.docker/config.json and credential helpers).
	Keychain authn.Keychain
	// Ports is where servers are published on their node, one port each
	// across the swarm. Default DefaultPorts.
	Ports PortRange
}

// Swarm is the backend on a swarm manager.
type Swarm struct {
	cli   *client.Client
	eng   *docker.Engine // the manager's engine: builds and images
	opt   Options
	ports *ports
}

var (
	_ backend.Runtime = (*Swarm)(nil)
	_ backend.Builder = (*Swarm)(nil)
)

// New connects to a manager. It does not check that it is one: EnsureNetwork
// (the daemon's first call) does, with an error that says what to fix.
func New(opt Options) (*Swarm, error) {
	if opt.PendingTimeout <= 0 {
		opt.PendingTimeout = 60 * time.Second
	}
	if opt.StopGrace <= 0 {
		opt.StopGrace = 3 * time.Second
	}
	if opt.PollInterval <= 0 {
		opt.PollInterval = time.Second
	}
	if opt.Keychain == nil {
		opt.Keychain = authn.DefaultKeychain
	}
	if opt.Ports == (PortRange{}) {
		opt.Ports = DefaultPorts
	}
	if err := opt.Ports.Validate(); err != nil {
		return nil, fmt.Errorf("ports: %w", err)
	}
	copts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if opt.Host != "" {
		copts = append(copts, client.WithHost(opt.Host))
	}
	cli, err := client.New(copts...)
	if err != nil {
		return nil, fmt.Errorf("creating the engine client: %w", err)
	}
	eng, err := docker.New(cli.DaemonHost())
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &Swarm{cli: cli, eng: eng, opt: opt, ports: &ports{r: opt.Ports}}, nil
}

// Close releases both clients.
func (s *Swarm) Close() error {
	return errors.Join(s.cli.Close(), s.eng.Close())
}

// Host is the manager's address.
func (s *Swarm) Host() string { return s.cli.DaemonHost() }

// ImageInspect implements backend.Builder on the manager's engine.
func (s *Swarm) ImageInspect(ctx context.Context, ref string) (backend.ImageInfo, error) {
	return s.eng.ImageInspect(ctx, ref)
}

// RunCapture implements backend.Builder on the manager's engine.
func (s *Swarm) RunCapture(ctx context.Context, spec backend.RunSpec) (backend.RunResult, error) {
	return s.eng.RunCapture(ctx, spec)
}

// Build implements backend.Builder on the manager's engine: an env is
// built there and pushed to the registry for the nodes (spawnd image push).
func (s *Swarm) Build(ctx context.Context, spec backend.BuildSpec, onLine func(backend.BuildLine)) (string, error) {
	return s.eng.Build(ctx, spec, onLine)
}

// Image implements backend.ImageStore on the manager's engine, where
// envs are built: a build through the daemon is normalized there as on one
// engine (same lock, same digest), then pushed for the nodes.
func (s *Swarm) Image(ctx context.Context, tag string) (v1.Image, error) {
	return s.eng.Image(ctx, tag)
}

// WriteImage implements backend.ImageStore on the manager's engine.
func (s *Swarm) WriteImage(ctx context.Context, tag string, img v1.Image) error {
	return s.eng.WriteImage(ctx, tag, img)
}

// Info implements backend.Runtime.
func (s *Swarm) Info(ctx context.Context) (backend.Info, error) {
	in, err := s.eng.Info(ctx)
	in.Backend = "swarm"
	return in, err
}

// checkManager returns nil when the engine is an active swarm manager.
func (s *Swarm) checkManager(ctx context.Context) error {
	res, err := s.cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("engine.host: asking %s for its swarm state: %w", s.cli.DaemonHost(), err)
	}
	sw := res.Info.Swarm
	switch {
	case sw.LocalNodeState != swarm.LocalNodeStateActive:
		return fmt.Errorf("engine.host: the engine at %s is not in a swarm (state %q); run `docker swarm init` there, or point engine.host at a manager: %w",
			s.cli.DaemonHost(), sw.LocalNodeState, errdefs.ErrInvalidArgument)
	case !sw.ControlAvailable:
		return fmt.Errorf("engine.host: the engine at %s is a swarm worker, not a manager; point engine.host at a manager (docker node ls shows them): %w",
			s.cli.DaemonHost(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// EnsureNetwork implements backend.Runtime: an attachable overlay network.
// Overlays cannot keep containers on them apart, so spec.ICC must be true:
// the config says so knowingly (docs/SWARM.md).
func (s *Swarm) EnsureNetwork(ctx context.Context, n backend.NetworkSpec) (backend.NetworkInfo, error) {
	if err := s.checkManager(ctx); err != nil {
		return backend.NetworkInfo{}, err
	}
	if !n.ICC {
		return backend.NetworkInfo{}, fmt.Errorf("network.icc: a swarm overlay network cannot block traffic between the servers on it; "+
			"set network.icc: true to accept that (each server still requires its own token; docs/SWARM.md): %w", errdefs.ErrInvalidArgument)
	}
	inspect := func() (client.NetworkInspectResult, error) {
		return s.cli.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{Scope: "swarm"})
	}
	res, err := inspect()
	if errdefs.IsNotFound(err) {
		_, err = s.cli.NetworkCreate(ctx, n.Name, client.NetworkCreateOptions{Driver: "overlay", Attachable: true, Scope: "swarm", Labels: n.Labels})
		if err != nil && !errdefs.IsConflict(err) {
			return backend.NetworkInfo{}, fmt.Errorf("creating overlay network %s: %w", n.Name, err)
		}
		res, err = inspect()
	}
	// The manager allocates a new network a moment after creating it;
	// until then it reports no driver and no subnet.
	for wait := 20 * time.Millisecond; err == nil && res.Network.Driver == ""; wait = min(2*wait, 500*time.Millisecond) {
		select {
		case <-ctx.Done():
			return backend.NetworkInfo{}, fmt.Errorf("network %s: the manager did not allocate it: %w", n.Name, ctx.Err())
		case <-time.After(wait):
		}
		res, err = inspect()
	}
	if err != nil {
		return backend.NetworkInfo{}, fmt.Errorf("inspecting network %s: %w", n.Name, err)
	}
	if res.Network.Driver != "overlay" || !res.Network.Attachable {
		return backend.NetworkInfo{}, fmt.Errorf("network.name: the network %q exists with driver %q (attachable %v); swarm needs an attachable overlay: "+
			"remove it (docker network rm %s) or name another network: %w", n.Name, res.Network.Driver, res.Network.Attachable, n.Name, errdefs.ErrInvalidArgument)
	}
	return backend.NetworkInfo{}, nil
}

// Pin resolves an env image to the reference by digest services run: the
// image must be in the registry (a reference without one is looked up in
// Options.Registry). A missing image is an errdefs not-found error that
// names the push to run.
func (s *Swarm) Pin(ctx context.Context, ref string) (string, error) {
	full := ref
	if s.opt.Registry != "" && !hasRegistry(ref) {
		full = s.opt.Registry + "/" + ref
	}
	if !hasRegistry(full) {
		return "", fmt.Errorf("image %s: no registry in the reference and engine.registry is not set; every node pulls from a registry "+
			"(set engine.registry and run spawnd image push ENV REGISTRY): %w", ref, errdefs.ErrInvalidArgument)
	}
	var nopts []name.Option
	if s.opt.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(full, nopts...)
	if err != nil {
		return "", fmt.Errorf("image %s: %w: %w", full, err, errdefs.ErrInvalidArgument)
	}
	if d, ok := r.(name.Digest); ok && s.opt.Registry == "" {
		return d.String(), nil // pinned already, and no registry of ours to ask
	}
	desc, err := remote.Head(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(s.opt.Keychain))
	if err != nil {
		var te *transport.Error
		reg := r.Context().RegistryStr()
		switch {
		case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
			return "", fmt.Errorf("image %s is not in the registry %s; push it: spawnd image push ENV %s: %w", full, reg, reg, errdefs.ErrNotFound)
		case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
			return "", fmt.Errorf("the registry %s refused spawnd for %s (%d %s): log in as the user spawnd runs as "+
				"(docker login %s, which writes its ~/.docker/config.json or $DOCKER_CONFIG), or check that account's access: %w",
				reg, full, te.StatusCode, http.StatusText(te.StatusCode), reg, errdefs.ErrUnauthenticated)
		}
		return "", fmt.Errorf("asking the registry %s for %s: %w: %w", r.Context().RegistryStr(), full, err, errdefs.ErrUnavailable)
	}
	return r.Context().Digest(desc.Digest.String()).String(), nil
}

// hasRegistry reports whether a reference names its registry (a first
// component with a dot or a colon, or localhost).
func hasRegistry(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return ok && (strings.ContainsAny(first, ".:") || first == "localhost")
}

// CheckImage implements backend.Runtime: the image is in the registry.
func (s *Swarm) CheckImage(ctx context.Context, ref string) error {
	_, err := s.Pin(ctx, ref)
	return err
}

// registryAuth is the X-Registry-Auth value for ref's registry ("" = anonymous).
func (s *Swarm) registryAuth(ref string) (string, error) {
	return docker.RegistryAuth(ref, s.opt.Keychain)
}

// serviceSpec is the service of one server: one replica, never restarted,
// the hardening of one host (capabilities dropped, no new privileges, an
// init, the pids limit), memory reserved as well as limited so the
// scheduler places by it, the single-user port published in host mode on
// hostPort (0: not published).
func (s *Swarm) serviceSpec(c backend.ContainerSpec, image string, hostPort int) swarm.ServiceSpec {
	one := uint64(1)
	init := true
	grace := s.opt.StopGrace
	cs := &swarm.ContainerSpec{
		Image: image, Labels: c.Labels, Env: c.Env, Args: c.Cmd, User: c.User, Dir: c.WorkingDir,
		Init: &init, StopGracePeriod: &grace, CapabilityDrop: []string{"ALL"},
		Privileges: &swarm.Privileges{NoNewPrivileges: true},
	}
	for _, m := range c.Mounts {
		cs.Mounts = append(cs.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	if c.ShmSize > 0 {
		cs.Mounts = append(cs.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: "/dev/shm",
			TmpfsOptions: &mount.TmpfsOptions{SizeBytes: c.ShmSize, Mode: 0o1777}})
	}
	res := &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: c.Memory, NanoCPUs: c.NanoCPUs, Pids: c.PidsLimit}}
	// The scheduler places by reservations: the profile's, else the limit.
	if mem := cmp.Or(c.MemoryReservation, c.Memory); mem > 0 || c.CPUReservation > 0 {
		res.Reservations = &swarm.Resources{MemoryBytes: mem, NanoCPUs: c.CPUReservation}
	}
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: c.Name, Labels: c.Labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: cs,
			Resources:     res,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: c.Placement},
			LogDriver:     &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "10m", "max-file": "2"}},
		},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}
	if c.Network != "" {
		spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: c.Network}}
	}
	if hostPort != 0 {
		spec.EndpointSpec.Ports = []swarm.PortConfig{{Protocol: network.TCP, TargetPort: uint32(c.Port),
			PublishedPort: uint32(hostPort), PublishMode: swarm.PortConfigPublishModeHost}}
	}
	spec.Annotations.Labels = cloneWith(c.Labels, portLabel, strconv.Itoa(c.Port))
	return spec
}

// ErrNoGPUs refuses a server that asks for GPUs. Swarm services cannot
// ask the engine for devices (no device requests in a service), and the
// one way Swarm hands out GPUs, generic resources, fails on Docker 20.10:
// a service reserving one NVIDIA-GPU on a node that advertises it was
// placed, then removed with "assigned node no longer meets constraints"
// (tried on this project's test swarm, with named and with discrete GPUs).
var ErrNoGPUs = fmt.Errorf("GPU profiles are not supported on Swarm (services cannot request devices); "+
	"use placement: [node.labels.gpu==true] with the NVIDIA runtime as those nodes' default: %w", errdefs.ErrInvalidArgument)

// portLabel keeps the single-user port in the service's own record.
const portLabel = "io.spawnd.swarm.port"

// cloneWith is m with k set to v, m itself untouched.
func cloneWith(m map[string]string, k, v string) map[string]string {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]string{}
	}
	out[k] = v
	return out
}

// Run implements backend.Runtime: create the service and wait until its
// task runs, ends, or waits for a node longer than PendingTimeout. A task
// that never ran (rejected: an image no node can pull, a mount source
// missing on the node) and a task no node takes leave no service behind;
// a server that ran and exited is returned as exited, for its log.
func (s *Swarm) Run(ctx context.Context, c backend.ContainerSpec) (backend.Container, error) {
	if c.GPUs != nil {
		return backend.Container{}, fmt.Errorf("gpus %s: %w", c.GPUs, ErrNoGPUs)
	}
	image, err := s.Pin(ctx, c.Image)
	if err != nil {
		return backend.Container{}, err
	}
	auth, err := s.registryAuth(image)
	if err != nil {
		return backend.Container{}, fmt.Errorf("registry credentials for %s: %w", image, err)
	}
	hostPort, release := 0, func() {}
	if c.PublishIP != "" {
		if hostPort, release, err = s.ports.take(ctx, s.cli); err != nil {
			return backend.Container{}, err
		}
	}
	res, err := s.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: s.serviceSpec(c, image, hostPort), EncodedRegistryAuth: auth})
	release()
	if err != nil {
		if strings.Contains(err.Error(), "name conflicts with an existing object") && !errdefs.IsConflict(err) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrConflict)
		}
		return backend.Container{}, fmt.Errorf("creating service %s: %w", c.Name, err)
	}
	begun, said := time.Now(), ""
	for {
		// The answer is the user's wait: ask every 25 ms while a task
		// usually starts (a few seconds; three small calls to the
		// manager each time), then every 250 ms (a pull, a full swarm).
		wait := 25 * time.Millisecond
		if time.Since(begun) > 5*time.Second {
			wait = 250 * time.Millisecond
		}
		got, err := s.inspect(ctx, res.ID)
		switch {
		case err != nil && ctx.Err() != nil:
			s.removeQuietly(ctx, res.ID)
			return backend.Container{}, fmt.Errorf("service %s: %w", c.Name, ctx.Err())
		case err != nil:
			// Keep asking until the deadline: a manager may be busy.
		case got.State == backend.Running:
			return got.Container, nil
		case got.State == backend.Exited && got.taskRan:
			return got.Container, nil
		case got.State == backend.Exited:
			s.removeQuietly(ctx, res.ID)
			return backend.Container{}, fmt.Errorf("service %s: no node could start it: %s: %w", c.Name, got.Error, classify(got.Error))
		case got.pending && time.Since(begun) > s.opt.PendingTimeout:
			s.removeQuietly(ctx, res.ID)
			return backend.Container{}, &backend.Unplaceable{Reason: explainPending(got.Error, c),
				Err: fmt.Errorf("service %s: no node took it within %s: %s: %w", c.Name, s.opt.PendingTimeout, got.Error, errdefs.ErrUnavailable)}
		}
		if err == nil && c.Waiting != nil {
			if msg := waitingFor(got); msg != "" && msg != said {
				said = msg
				c.Waiting(msg)
			}
		}
		select {
		case <-ctx.Done():
			s.removeQuietly(ctx, res.ID)
			reason := ""
			if err == nil && got.Error != "" {
				reason = " (" + got.Error + ")"
			}
			return backend.Container{}, fmt.Errorf("service %s: not running before the deadline%s: %w", c.Name, reason, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// classify makes a task's error an errdefs class.
func classify(taskErr string) error {
	switch {
	case strings.Contains(taskErr, "No such image"), strings.Contains(taskErr, "not found"), strings.Contains(taskErr, "manifest unknown"):
		return errdefs.ErrNotFound
	case strings.Contains(taskErr, "invalid mount config"), strings.Contains(taskErr, "bind source path does not exist"):
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnavailable
}

// waitingFor says what a start waits for, in the spawn page's words.
func waitingFor(o observed) string {
	on := o.node.host
	switch o.taskState {
	case swarm.TaskStateNew, swarm.TaskStatePending, swarm.TaskStateAllocated:
		return "Waiting for a machine with room for the server"
	case swarm.TaskStateAssigned, swarm.TaskStateAccepted:
		return "Placed on " + on
	case swarm.TaskStatePreparing:
		return on + " is pulling the env's image (the first start there waits for it)"
	case swarm.TaskStateReady, swarm.TaskStateStarting:
		return "Starting on " + on
	}
	return ""
}

// explainPending turns Swarm's scheduling message into what to fix.
func explainPending(taskErr string, c backend.ContainerSpec) string {
	switch {
	case strings.Contains(taskErr, "insufficient resources"):
		return fmt.Sprintf("no node has %d MiB of memory free to reserve; try a smaller profile, or ask an admin to free or add a node", c.Memory>>20)
	case strings.Contains(taskErr, "constraints not satisfied"), strings.Contains(taskErr, "scheduling constraints"):
		return fmt.Sprintf("no node matches the profile's placement %v; ask an admin to label a node or change the profile", c.Placement)
	case taskErr == "":
		return "no node took it, and Swarm gave no reason"
	}
	return "no node took it: " + taskErr
}

func (s *Swarm) removeQuietly(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = s.Remove(rctx, id, 0)
}

// observed is a service as a Container, with what Run needs besides.
type observed struct {
	backend.Container
	pending   bool // the task waits for a node
	taskRan   bool // the task's container existed
	taskState swarm.TaskState
	node      nodeInfo
}

// Inspect implements backend.Runtime: the service and its newest task.
func (s *Swarm) Inspect(ctx context.Context, idOrName string) (backend.Container, error) {
	o, err := s.inspect(ctx, idOrName)
	return o.Container, err
}

func (s *Swarm) inspect(ctx context.Context, idOrName string) (observed, error) {
	svc, err := s.cli.ServiceInspect(ctx, idOrName, client.ServiceInspectOptions{})
	if err != nil {
		return observed{}, fmt.Errorf("inspecting service %s: %w", idOrName, err)
	}
	f := client.Filters{}
	f.Add("service", svc.Service.ID)
	tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
	if err != nil {
		return observed{}, fmt.Errorf("listing the tasks of service %s: %w", idOrName, err)
	}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return observed{}, err
	}
	return fromService(svc.Service, tasks.Items, nodes), nil
}

// nodeInfo is what a container needs of its node.
type nodeInfo struct {
	addr, host    string
	down, drained bool
}

func (s *Swarm) nodes(ctx context.Context) (map[string]nodeInfo, error) {
	res, err := s.cli.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the swarm's nodes: %w", err)
	}
	out := make(map[string]nodeInfo, len(res.Items))
	for _, n := range res.Items {
		out[n.ID] = nodeInfo{addr: n.Status.Addr, host: n.Description.Hostname, down: n.Status.State == swarm.NodeStateDown,
			drained: n.Spec.Availability == swarm.NodeAvailabilityDrain}
	}
	return out, nil
}

// fromService makes a Container of a service and its tasks.
func fromService(svc swarm.Service, tasks []swarm.Task, nodes map[string]nodeInfo) observed {
	o := observed{Container: backend.Container{
		ID: svc.ID, Name: svc.Spec.Name, Labels: map[string]string{}, Created: svc.CreatedAt, State: backend.Created,
	}}
	for k, v := range svc.Spec.Labels {
		if k != portLabel {
			o.Labels[k] = v
		}
	}
	o.Port, _ = strconv.Atoi(svc.Spec.Labels[portLabel])
	if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
		o.Image = cs.Image
		if _, d, ok := strings.Cut(cs.Image, "@"); ok {
			o.ImageID = d
		}
	}
	if len(tasks) == 0 {
		return o // a service whose task is not made yet (or replicas 0)
	}
	t := slices.MaxFunc(tasks, func(a, b swarm.Task) int { return a.CreatedAt.Compare(b.CreatedAt) })
	st := t.Status
	node := nodes[t.NodeID]
	o.taskState, o.node = st.State, node
	o.Error = st.Err
	if st.ContainerStatus != nil {
		o.ExitCode = st.ContainerStatus.ExitCode
		o.taskRan = st.ContainerStatus.ContainerID != ""
	}
	for _, na := range t.NetworksAttachments {
		if len(na.Addresses) > 0 && na.Network.Spec.Name != "ingress" {
			o.IP = na.Addresses[0].Addr().String()
			break
		}
	}
	if fixed := specPort(svc, o.Port); fixed != 0 && st.State == swarm.TaskStateRunning {
		o.HostPort, o.HostIP = fixed, node.addr // one port on both IPv4 and IPv6 (ports.go)
	} else {
		// A service of an older spawnd, published on a port its node chose:
		// the first entry is IPv4's (moby lists 0.0.0.0's binding first).
		for _, p := range st.PortStatus.Ports {
			if int(p.TargetPort) == o.Port && p.PublishedPort != 0 {
				o.HostPort, o.HostIP = int(p.PublishedPort), node.addr
				break
			}
		}
	}
	switch st.State {
	case swarm.TaskStateRunning:
		o.State, o.StartedAt = backend.Running, st.Timestamp
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
		o.State, o.FinishedAt = backend.Exited, st.Timestamp
		if st.State == swarm.TaskStateRejected && o.ExitCode == 0 {
			o.ExitCode = 128 // it never ran: not a clean exit
		}
	case swarm.TaskStatePending, swarm.TaskStateNew, swarm.TaskStateAllocated:
		o.pending = true
		if st.Err == "" && st.Message != "" && st.Message != "pending task scheduling" {
			o.Error = st.Message
		}
	}
	if o.State == backend.Exited && o.Error == "" && node.drained {
		// Draining shuts the task down; with restart none nothing replaces it.
		o.Error = fmt.Sprintf("node %s (%s) was drained", node.host, node.addr)
	}
	if len(tasks) > 1 && o.State != backend.Exited {
		// Swarm replaced the task spawnd started (it never should, with
		// restart none): the server the hub knew is gone.
		o.State, o.FinishedAt = backend.Exited, time.Time{}
		o.Error = "the swarm replaced the server's task on another node"
	}
	if t.DesiredState != swarm.TaskStateRunning && o.State == backend.Running {
		o.State = backend.Removing // being shut down
	}
	if node.down && (o.State == backend.Running || o.State == backend.Created || o.State == backend.Removing) {
		// The node is gone; so is the server on it.
		o.State, o.ExitCode, o.FinishedAt = backend.Exited, 137, time.Time{}
		o.Error = fmt.Sprintf("node %s (%s) is down", node.host, node.addr)
	}
	return o
}

// specPort is the host port svc's spec publishes target on, 0 if none.
func specPort(svc swarm.Service, target int) int {
	if svc.Spec.EndpointSpec == nil {
		return 0
	}
	for _, p := range svc.Spec.EndpointSpec.Ports {
		if int(p.TargetPort) == target && p.PublishMode == swarm.PortConfigPublishModeHost {
			return int(p.PublishedPort)
		}
	}
	return 0
}

// FollowLogs writes a service's last tail log lines to w, then each one
// as it comes, until ctx ends or the task does.
func (s *Swarm) FollowLogs(ctx context.Context, id string, tail int, w io.Writer) error {
	rc, err := s.cli.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return fmt.Errorf("following the log of service %s: %w", id, err)
	}
	defer rc.Close()
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil {
		return fmt.Errorf("following the log of service %s: %w", id, err)
	}
	return nil
}

// Logs implements backend.Runtime: the service's log through the manager.
func (s *Swarm) Logs(ctx context.Context, id string, tail int) (string, error) {
	rc, err := s.cli.ServiceLogs(ctx, id, client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(tail)})
	if err != nil {
		return "", fmt.Errorf("reading the logs of service %s: %w", id, err)
	}
	defer rc.Close()
	out, err := docker.ReadLogs(rc)
	if err != nil && !errors.Is(err, io.EOF) {
		return out, fmt.Errorf("reading the logs of service %s: %w", id, err)
	}
	return out, nil
}

// Remove implements backend.Runtime: remove the service, then wait (at most
// the grace and 15 s) until its task's container is gone, so a home is
// not written by two servers at once. The grace is the service's
// StopGracePeriod (Options.StopGrace); grace here only bounds the wait.
func (s *Swarm) Remove(ctx context.Context, id string, grace time.Duration) error {
	if _, err := s.cli.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("removing service %s: %w", id, err)
	}
	f := client.Filters{}
	f.Add("service", id)
	deadline := time.Now().Add(max(grace, s.opt.StopGrace) + 15*time.Second)
	for time.Now().Before(deadline) {
		tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
		if err != nil || len(tasks.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil // removed; the wait is a courtesy
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// List implements backend.Runtime: every service with all labels, each
// complete (a task says everything an inspect would).
func (s *Swarm) List(ctx context.Context, labels map[string]string) ([]backend.Container, error) {
	os, err := s.list(ctx, labels)
	if err != nil {
		return nil, err
	}
	out := make([]backend.Container, len(os))
	for i, o := range os {
		out[i] = o.Container
	}
	return out, nil
}

func (s *Swarm) list(ctx context.Context, labels map[string]string) ([]observed, error) {
	f := client.Filters{}
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	svcs, err := s.cli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	if len(svcs.Items) == 0 {
		return nil, nil
	}
	tf := client.Filters{}
	for _, svc := range svcs.Items {
		tf.Add("service", svc.ID)
	}
	tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: tf})
	if err != nil {
		return nil, fmt.Errorf("listing tasks: %w", err)
	}
	byService := map[string][]swarm.Task{}
	for _, t := range tasks.Items {
		byService[t.ServiceID] = append(byService[t.ServiceID], t)
	}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]observed, 0, len(svcs.Items))
	for _, svc := range svcs.Items {
		out = append(out, fromService(svc, byService[svc.ID], nodes))
	}
	return out, nil
}

// Events implements backend.Runtime. Swarm reports no task events, so the
// manager is asked every PollInterval and changes become events: create,
// start (running), die (ended, or its node went down), destroy (gone).
func (s *Swarm) Events(ctx context.Context, labels map[string]string) (<-chan backend.ContainerEvent, <-chan error) {
	out := make(chan backend.ContainerEvent, 64)
	errc := make(chan error, 1)
	poll := func() (map[string]backend.Container, error) {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cs, err := s.List(lctx, labels)
		now := make(map[string]backend.Container, len(cs))
		for _, c := range cs {
			now[c.ID] = c
		}
		return now, err
	}
	// The first listing is taken before Events returns: whatever happens
	// after the call is an event, as with an engine's subscription.
	last, err := poll()
	if err != nil {
		errc <- err
		close(out)
		return out, errc
	}
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(s.opt.PollInterval):
			}
			now, err := poll()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				errc <- err
				return
			}
			for _, ev := range diff(last, now) {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
			last = now
		}
	}()
	return out, errc
}

// diff is the events between two pollings.
func diff(last, now map[string]backend.Container) []backend.ContainerEvent {
	var evs []backend.ContainerEvent
	for id, c := range now {
		was, ok := last[id]
		if !ok {
			evs = append(evs, backend.ContainerEvent{ID: id, Action: "create", Labels: c.Labels})
		}
		if c.State != was.State || c.StartedAt != was.StartedAt {
			switch c.State {
			case backend.Running:
				evs = append(evs, backend.ContainerEvent{ID: id, Action: "start", Labels: c.Labels})
			case backend.Exited:
				evs = append(evs, backend.ContainerEvent{ID: id, Action: "die", Labels: c.Labels})
			}
		}
	}
	for id, c := range last {
		if _, ok := now[id]; !ok {
			evs = append(evs, backend.ContainerEvent{ID: id, Action: "destroy", Labels: c.Labels})
		}
	}
	return evs
}

// PrepullEvent is one node's progress in Prepull.
type PrepullEvent = backend.PrepullEvent

// Prepull puts an env image on every node that can run servers, so that no
// start waits for a pull: a global job of the image (one task per active
// node, each pulling it by digest and exiting at once) that is removed at
// the end. progress hears each node's changes. The error names every node
// that failed and why.
func (s *Swarm) Prepull(ctx context.Context, ref string, labels map[string]string, progress func(PrepullEvent)) (string, error) {
	image, err := s.Pin(ctx, ref)
	if err != nil {
		return "", err
	}
	auth, err := s.registryAuth(image)
	if err != nil {
		return "", fmt.Errorf("registry credentials for %s: %w", image, err)
	}
	l := cloneWith(labels, prepullLabel, "true")
	res, err := s.cli.ServiceCreate(ctx, client.ServiceCreateOptions{EncodedRegistryAuth: auth, Spec: swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "spawnd-prepull-" + shortDigest(image), Labels: l},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Labels: l, Command: []string{"sh", "-c", "exit 0"},
				CapabilityDrop: []string{"ALL"}, User: "65534:65534"},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}})
	if err != nil {
		return "", fmt.Errorf("creating the prepull job for %s: %w", image, err)
	}
	defer s.removeQuietly(ctx, res.ID)
	f := client.Filters{}
	f.Add("service", res.ID)
	seen := map[string]string{} // node ID -> state reported
	for {
		tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
		if err != nil {
			return "", fmt.Errorf("following the prepull of %s: %w", image, err)
		}
		nodes, err := s.nodes(ctx)
		if err != nil {
			return "", err
		}
		ready, failed, done := 0, []string{}, 0
		states := make(map[string]string, len(tasks.Items))
		for _, t := range tasks.Items {
			state := "pulling"
			switch t.Status.State {
			case swarm.TaskStateRunning, swarm.TaskStateComplete:
				state = "ready"
				ready++
				if t.Status.State == swarm.TaskStateComplete {
					done++
				}
			case swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
				state = "failed"
				done++
				n := nodes[t.NodeID]
				failed = append(failed, fmt.Sprintf("%s (%s): %s", n.host, n.addr, t.Status.Err))
			}
			states[t.NodeID] = state
		}
		for _, t := range tasks.Items {
			if state := states[t.NodeID]; seen[t.NodeID] != state {
				seen[t.NodeID] = state
				if progress != nil {
					n := nodes[t.NodeID]
					progress(PrepullEvent{Node: n.host + " (" + n.addr + ")", State: state, Err: t.Status.Err, Ready: ready, Nodes: len(tasks.Items)})
				}
			}
		}
		if len(tasks.Items) > 0 && done == len(tasks.Items) {
			if len(failed) > 0 {
				return image, fmt.Errorf("%s is on %d of %d nodes; it failed on %s", image, ready, len(tasks.Items), strings.Join(failed, "; "))
			}
			return image, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("prepulling %s: %d of %d nodes ready when the deadline came: %w", image, ready, len(tasks.Items), ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// prepullLabel marks a prepull job (a sweep may remove one a killed run left).
const prepullLabel = "io.spawnd.prepull"

func shortDigest(ref string) string {
	_, d, _ := strings.Cut(ref, "@sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}
