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
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
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
