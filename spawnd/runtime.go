package spawnd

import (
	"context"
	"time"
)

// Runtime is what the lifecycle needs from a container engine. The Docker
// engine implementation lives in spawnd/docker and is the only code that
// imports the engine client; unit tests use a fake. Errors are classified
// with github.com/containerd/errdefs (IsNotFound, IsConflict).
type Runtime interface {
	// ImageID returns the id of a local image, or an errdefs not-found error.
	ImageID(ctx context.Context, ref string) (string, error)
	// EnsureNetwork creates the network if it does not exist and says where
	// it is on the host.
	EnsureNetwork(ctx context.Context, n NetworkSpec) (NetworkInfo, error)
	// Create creates a container; a name conflict is an errdefs conflict error.
	Create(ctx context.Context, spec ContainerSpec) (id string, err error)
	Start(ctx context.Context, id string) error
	Inspect(ctx context.Context, idOrName string) (Container, error)
	// Logs returns the last lines (at most tail) of what the container wrote
	// to stdout and stderr, interleaved as the engine stored them.
	Logs(ctx context.Context, id string, tail int) (string, error)
	// Remove stops a container (SIGTERM, then SIGKILL after grace) and removes it.
	// Removing a container that is already gone is not an error.
	Remove(ctx context.Context, id string, grace time.Duration) error
	// List returns every container (running or not) that carries all labels.
	// It may return Partial containers (see Container.Partial).
	List(ctx context.Context, labels map[string]string) ([]Container, error)
	// Events streams container events of containers that carry all labels
	// until ctx ends or the stream breaks (then one error is sent).
	Events(ctx context.Context, labels map[string]string) (<-chan Event, <-chan error)
}

// NetworkInfo is a user network as the host sees it.
type NetworkInfo struct {
	// Gateway is the host's address on the network.
	Gateway string
	// Bridge is the network's Linux bridge ("" when the engine does not say).
	Bridge string
}

// NetworkSpec is a user network the daemon owns.
type NetworkSpec struct {
	Name   string
	ICC    bool // inter-container traffic
	Labels map[string]string
}

// Mount is a bind mount from the host.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

// ContainerSpec is everything the daemon decides about a user container.
// The engine implementation adds the hardening that is never optional: all
// capabilities dropped, no-new-privileges, an init process as PID 1.
type ContainerSpec struct {
	Name       string
	Image      string
	Labels     map[string]string
	Env        []string // KEY=VALUE; never logged
	Cmd        []string
	User       string // "uid:gid"
	WorkingDir string
	Mounts     []Mount
	Port       int    // the single-user port inside the container
	PublishIP  string // publish Port on this host address (e.g. 127.0.0.1); "" = don't publish
	Network    string // the network to attach to
	Memory     int64  // bytes; 0 = unlimited
	NanoCPUs   int64
	PidsLimit  int64
}

// Container states as the engine reports them.
const (
	EngineCreated    = "created"
	EngineRunning    = "running"
	EngineRestarting = "restarting"
	EnginePaused     = "paused"
	EngineExited     = "exited"
	EngineDead       = "dead"
	EngineRemoving   = "removing"
)

// Container is what the daemon observes of one container.
type Container struct {
	ID         string
	Name       string
	Labels     map[string]string
	State      string // one of the Engine* states
	ExitCode   int
	OOMKilled  bool
	Error      string
	Created    time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	Image      string
	ImageID    string
	HostPort   int    // the published host port of the single-user port, if any
	IP         string // the container's address on its network
	// Partial is set when the container came from a listing: StartedAt,
	// FinishedAt, ExitCode, OOMKilled and Error are unknown until an inspect.
	Partial bool
}

// Event is one container event from the engine.
type Event struct {
	ID     string
	Action string // create, start, die, oom, destroy, ...
	Labels map[string]string
}
