package daemon

import (
	"io"
	"slices"
	"sort"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
	"github.com/spawnd/spawnd/spawnd/swarm"
)

// engine is what the daemon needs of a backend: the lifecycle for the core,
// building for the build endpoint, and Close.
type engine interface {
	backend.Runtime
	backend.Builder
	io.Closer
}

// backends makes the backend engine.backend names. A backend is one entry
// here, once it passes spawnd/backend/backendtest.
var backends = map[string]func(*Config) (engine, error){
	"docker": func(c *Config) (engine, error) { return docker.New(c.Engine.Host) },
	"swarm": func(c *Config) (engine, error) {
		ports, err := c.Engine.portRange()
		if err != nil {
			return nil, err
		}
		return swarm.New(swarm.Options{Host: c.Engine.Host, Registry: c.Engine.Registry, Insecure: c.Engine.InsecureRegistry,
			PendingTimeout: c.Engine.PendingTimeout, StopGrace: c.StopGrace, Ports: ports})
	},
}

func backendNames() []string {
	names := make([]string, 0, len(backends))
	for n := range backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return slices.Clip(names)
}
