// Package swarm is the Docker Swarm backend (spawnd/backend): each user
// server is a Swarm service of one replica that is never restarted, placed
// by the swarm's scheduler on any node, named by its image's digest in a
// registry every node pulls from, and published in host mode on the node
// that runs it (no VIP: IPVS drops idle websockets after 900 s).
//
// A backend.Container is a service: its ID is the service's ID and its state
// is that of the service's newest task (new … starting are Created, running
// is Running, the ends are Exited with the task's exit code and error). The
// engine reports no task events, so Events polls the manager. Builds and the
// image store are the manager's own engine: spawnd/backends pairs this
// Runtime with a spawnd/docker engine at the same address.
package swarm

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/engineapi"
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
	opt   Options
	ports *ports
}

var _ backend.Runtime = (*Swarm)(nil)

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
	return &Swarm{cli: cli, opt: opt, ports: &ports{r: opt.Ports}}, nil
}

// Close releases the client.
func (s *Swarm) Close() error { return s.cli.Close() }

// Host is the manager's address.
func (s *Swarm) Host() string { return s.cli.DaemonHost() }

// Info implements backend.Runtime.
func (s *Swarm) Info(ctx context.Context) (backend.Info, error) {
	return engineapi.Info(ctx, s.cli, "swarm")
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
