// Package backends is the one place that picks a backend: it turns the
// config's engine section into a backend.Set (the Runtime and every
// capability the backend declares), for the daemon and the CLI alike. A
// backend is one entry of the table here, once it passes
// spawnd/backend/backendtest.
package backends

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
	"github.com/spawnd/spawnd/spawnd/swarm"
)

// ErrNoGPUs is Swarm's answer to a profile with GPUs.
var ErrNoGPUs = swarm.ErrNoGPUs

// table makes the backend engine.backend names.
var table = map[string]func(c *EngineConfig, stopGrace time.Duration) (backend.Set, error){
	"docker": func(c *EngineConfig, _ time.Duration) (backend.Set, error) {
		e, err := docker.New(c.Host)
		if err != nil {
			return backend.Set{}, err
		}
		return dockerSet(e), nil
	},
	"swarm": func(c *EngineConfig, stopGrace time.Duration) (backend.Set, error) {
		ports, err := c.portRange()
		if err != nil {
			return backend.Set{}, err
		}
		s, err := swarm.New(swarm.Options{Host: c.Host, Registry: c.Registry, Insecure: c.InsecureRegistry,
			PendingTimeout: c.PendingTimeout, StopGrace: stopGrace, Ports: ports})
		if err != nil {
			return backend.Set{}, err
		}
		// Envs are built, normalized and stored on the manager's own engine,
		// then pushed to the registry for the nodes.
		e, err := docker.New(s.Host())
		if err != nil {
			s.Close()
			return backend.Set{}, err
		}
		return backend.Set{
			Name: "swarm", Runtime: s, Builder: e, Images: e, Logs: s, Prepull: s,
			NodeHomes: func(root, network string) backend.HomeStore { return s.NodeHomes(root, network) },
			Close:     func() error { return errors.Join(s.Close(), e.Close()) },
		}, nil
	},
}

func dockerSet(e *docker.Engine) backend.Set {
	return backend.Set{Name: "docker", Runtime: e, Builder: e, Images: e, BuildsInPlace: true, Puller: e, Logs: e, LateMounts: true, Promote: e.Promote, Close: e.Close}
}

// Open makes the backend c names (defaults filled); stopGrace is how long
// a stopping server has between SIGTERM and SIGKILL where the backend
// takes it at creation (Swarm).
func Open(c EngineConfig, stopGrace time.Duration) (backend.Set, error) {
	c.Defaults()
	if err := c.Validate(); err != nil {
		return backend.Set{}, err
	}
	return table[c.Backend](&c, stopGrace)
}

// Local is one Docker engine at host ("": DOCKER_HOST or the local
// socket), where the CLI builds, prunes and moves images: the engine
// itself, for what only one engine does (ping, prune), and its Set.
func Local(host string) (*docker.Engine, backend.Set, error) {
	e, err := docker.New(host)
	if err != nil {
		return nil, backend.Set{}, err
	}
	return e, dockerSet(e), nil
}

// Names are the backends engine.backend may name.
func Names() []string {
	names := make([]string, 0, len(table))
	for n := range table {
		names = append(names, n)
	}
	sort.Strings(names)
	return slices.Clip(names)
}

// EngineConfig is the config's engine section: which backend runs the
// containers, and where its engine is.
type EngineConfig struct {
	// Backend is the backend that runs user containers: docker (one Docker
	// engine) or swarm (a service per server on a Docker Swarm; Host is a
	// manager; docs/SWARM.md). Default docker.
	Backend string `mapstructure:"backend"`
	// Host is the engine address (unix:///var/run/docker.sock, tcp://...). Default: DOCKER_HOST or the local socket.
	Host string `mapstructure:"host"`
	// Registry (swarm) is the registry every node pulls env images from,
	// host[:port]; push them with spawnd image push ENV REGISTRY. Servers
	// run the image by digest.
	Registry string `mapstructure:"registry"`
	// InsecureRegistry (swarm) reaches the registry over plain HTTP (a
	// private network; each node's dockerd lists it in insecure-registries).
	InsecureRegistry bool `mapstructure:"insecure_registry"`
	// PendingTimeout (swarm) is how long a server may wait for a node that
	// can take it before its start fails with Swarm's reason. Default 60s.
	PendingTimeout time.Duration `mapstructure:"pending_timeout"`
	// Ports (swarm) is the range of host ports servers are published on,
	// FIRST-LAST, one port per server across the swarm (the hub reaches a
	// server at its node's address and this port; open it between the
	// hub and the nodes). Default 30000-32767.
	Ports string `mapstructure:"ports"`
	// Homes is where users' homes live: shared (homes_root on the daemon's
	// host; on Swarm, a file system every node mounts at that path) or node
	// (swarm: each home on the local disk of one node, at homes_root there;
	// the user's servers run on that node; spawnd home move USER --to NODE
	// moves it). Default shared.
	Homes string `mapstructure:"homes"`
}

// Defaults fills the section's defaults.
func (e *EngineConfig) Defaults() {
	if e.Backend == "" {
		e.Backend = "docker"
	}
	if e.Homes == "" {
		e.Homes = "shared"
	}
}

// Validate checks the section, naming the key of the first mistake.
func (e *EngineConfig) Validate() error {
	if _, ok := table[e.Backend]; !ok {
		return fmt.Errorf("engine.backend: %q is not one of %v", e.Backend, Names())
	}
	if e.Backend != "swarm" && (e.Registry != "" || e.InsecureRegistry || e.PendingTimeout != 0 || e.Ports != "") {
		return fmt.Errorf("engine: registry, insecure_registry, pending_timeout and ports are for engine.backend: swarm (this one is %s)", e.Backend)
	}
	if _, err := e.portRange(); err != nil {
		return err
	}
	switch {
	case e.Homes != "shared" && e.Homes != "node":
		return fmt.Errorf("engine.homes: %q is not shared or node", e.Homes)
	case e.Homes == "node" && e.Backend != "swarm":
		return fmt.Errorf("engine.homes: node pins homes to swarm nodes; one engine has one disk (use shared, or engine.backend: swarm)")
	}
	if e.PendingTimeout < 0 {
		return fmt.Errorf("engine.pending_timeout: %s is negative", e.PendingTimeout)
	}
	if e.Backend == "swarm" && e.Registry == "" {
		return errors.New("engine.registry: swarm nodes pull env images from a registry; name it (host:port) and push envs there with spawnd image push ENV REGISTRY")
	}
	return nil
}

// portRange is engine.ports parsed; the zero range if unset.
func (e *EngineConfig) portRange() (swarm.PortRange, error) {
	if e.Ports == "" {
		return swarm.PortRange{}, nil
	}
	var r swarm.PortRange
	a, b, ok := strings.Cut(e.Ports, "-")
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return r, fmt.Errorf("engine.ports: %q is not FIRST-LAST, like 30000-32767", e.Ports)
	}
	r = swarm.PortRange{First: first, Last: last}
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("engine.ports: %w", err)
	}
	return r, nil
}
