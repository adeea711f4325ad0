package daemon

import (
	"io"
	"slices"
	"sort"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// engine is what the daemon needs of a backend: the lifecycle for the core,
// building for the build endpoint, and Close.
type engine interface {
	backend.Runtime
	backend.Builder
	io.Closer
}

// backends makes the backend engine.backend names. A new backend (Swarm) is
// one entry here, once it passes spawnd/backend/backendtest.
var backends = map[string]func(EngineConfig) (engine, error){
	"docker": func(c EngineConfig) (engine, error) { return docker.New(c.Host) },
}

func backendNames() []string {
	names := make([]string, 0, len(backends))
	for n := range backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return slices.Clip(names)
}
