// Package backend is the contract between spawnd and the systems that run
// its containers and hold its images. The core (package spawnd) runs user
// servers on a Runtime; the image builder (package images) locks and builds
// envs on a Builder and moves images through an ImageStore; the daemon and
// doctor read an engine's Info. A backend (spawnd/docker today) implements
// them; nothing else imports an engine client.
//
// The contract is backend-neutral: a container is run in one call (no
// create/start split), its single-user port travels in the backend's own
// record, and errors are classified with github.com/containerd/errdefs
// (IsNotFound, IsConflict, IsUnavailable, IsInvalidArgument). The lifecycle
// rules every Runtime must keep are written down as tests in
// spawnd/backend/backendtest, which the Docker backend and the shared fake
// (spawnd/backend/fakebackend) both pass.
package backend

import (
	"context"
	"io"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Runtime runs user containers: what the core's lifecycle needs.
type Runtime interface {
	// Info says which engine this is.
	Info(ctx context.Context) (Info, error)
	// CheckImage returns nil when ref can be run, or an errdefs not-found
	// error when it is not there.
	CheckImage(ctx context.Context, ref string) error
	// EnsureNetwork creates the network if it does not exist and says where
	// it is on the host. A network that exists and contradicts spec is an
	// errdefs invalid-argument error whose message names the key to fix.
	EnsureNetwork(ctx context.Context, spec NetworkSpec) (NetworkInfo, error)
	// Run creates and starts a container and returns it running (or as
	// far as it got). A name already taken is an errdefs conflict error and
	// changes nothing; any other failure leaves no container behind.
	Run(ctx context.Context, spec ContainerSpec) (Container, error)
	// Inspect returns one container, complete.
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
	// Events streams events of containers that carry all labels until ctx
	// ends or the stream breaks (then one error is sent).
	Events(ctx context.Context, labels map[string]string) (<-chan ContainerEvent, <-chan error)
}

// Info is what an engine says of itself.
type Info struct {
	// Backend names the backend ("docker").
	Backend     string
	Version     string
	APIVersion  string
	RuncVersion string
	LiveRestore bool
	// GPURuntime says the engine lists the NVIDIA runtime (the NVIDIA
	// Container Toolkit), without which no server gets a GPU.
	GPURuntime bool
}

// NetworkSpec is a user network the daemon owns.
type NetworkSpec struct {
	Name   string
	ICC    bool // inter-container traffic
	Labels map[string]string
}

// NetworkInfo is a user network as the host sees it.
type NetworkInfo struct {
	// Gateway is the host's address on the network.
	Gateway string
	// Bridge is the network's Linux bridge ("" when the engine does not say).
	Bridge string
}

// Mount is a bind mount from the host.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
	// Late: a mount made on the host onto Source after the container
	// started reaches the container (rslave propagation; Source must be on
	// a shared mount). Only a backend that declares LateMounts takes it.
	Late bool
}

// HomeSpec is the home a server needs, as a home store that lives on the
// nodes (Swarm's node-pinned homes) is asked for it.
type HomeSpec struct {
	User     string // the user's name, for labels and logs
	Dir      string // the home's directory name under homes_root
	UID, GID int    // the owner of a new home
	// Image is the server's env image: the helpers that make, move and
	// delete homes on a node run from it (it has sh, tar and python3).
	Image string
	// Placement is the server's own constraints: a new home goes to a
	// node that can run the server.
	Placement []string
	Labels    map[string]string // the daemon's labels, for what the store creates
}

// Owner is who owns a home on the host when it is not the env image's
// user: the server, which runs as the image's user, gets the home through
// an idmapped mount that shows Owner's files as its own.
type Owner struct{ UID, GID int }

// Home is where a server finds its home: the path on the machine that runs
// it, and the constraints that put the server on that machine (none when
// the home is on every machine).
type Home struct {
	Source    string
	Placement []string
	// Owner, when set, owns the home on the host; nil: the image's user does.
	Owner *Owner
}

// HomeMove is what moving a home to another node did.
type HomeMove struct {
	From, To string // the nodes, by host name
	Bytes    int64  // the size of the archive that crossed
	SHA256   string // its digest, as both ends computed it
	// OldCopy is the name the home keeps on the node it left (never deleted).
	OldCopy string
}

// ContainerSpec is everything the core decides about a user container.
// A backend adds the hardening that is never optional: all capabilities
// dropped, no-new-privileges, an init process as PID 1.
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
	// MemoryReservation and CPUReservation (nano CPUs) are what the server
	// is promised, below its limits: Swarm places by them; one engine
	// reclaims memory down to the reservation under pressure and weighs
	// CPU time by it. 0 = none.
	MemoryReservation int64
	CPUReservation    int64
	// ShmSize is the size of /dev/shm in bytes; 0 = the engine's (64 MiB).
	ShmSize int64
	// GPUs asks for GPUs; nil = none.
	GPUs *GPURequest
	// Placement constrains which nodes may run it (Swarm constraints such
	// as node.labels.gpu==true); a single-engine backend refuses any.
	Placement []string
	// Background runs it at the lowest CPU weight until Set.Promote gives
	// it the weight of a server (a warm server boots before anyone asks:
	// under contention, people's servers and the hub come first).
	Background bool
	// Waiting, when set, hears what Run waits for, in words for the
	// person who started the server (Swarm: the node chosen, the image
	// pull there). It is called from Run's goroutine.
	Waiting func(msg string)
}

// GPURequest is the GPUs a server asks for: Count of any (-1 = all the
// machine has), or the devices DeviceIDs names (index or UUID).
type GPURequest struct {
	Count     int
	DeviceIDs []string
}

// String is the request as a profile writes it.
func (g GPURequest) String() string {
	switch {
	case len(g.DeviceIDs) > 0:
		return strings.Join(g.DeviceIDs, ",")
	case g.Count < 0:
		return "all"
	}
	return strconv.Itoa(g.Count)
}

// Unplaceable is Run's error for a container no node can run now (Swarm:
// none has the memory it reserves, or matches its placement). Reason is
// written for the person who asked and holds no host path; the core shows
// it on the spawn page.
type Unplaceable struct {
	Reason string
	Err    error // the backend's own error, for the log
}

func (e *Unplaceable) Error() string { return e.Reason + ": " + e.Err.Error() }

// Unwrap returns the backend's error.
func (e *Unplaceable) Unwrap() error { return e.Err }

// State is a container's state as the backend reports it.
type State string

// Container states.
const (
	Created    State = "created" // made, never started (a run cut off by a crash)
	Running    State = "running"
	Restarting State = "restarting"
	Paused     State = "paused"
	Exited     State = "exited"
	Dead       State = "dead"
	Removing   State = "removing"
)

// Container is what the core observes of one container.
type Container struct {
	ID         string
	Name       string
	Labels     map[string]string
	State      State
	ExitCode   int
	OOMKilled  bool
	Error      string
	Created    time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	Image      string
	ImageID    string
	// Port is the single-user port inside the container (ContainerSpec.Port),
	// as the backend recorded it.
	Port     int
	HostPort int // the published host port of Port, if any
	// HostIP is the address HostPort is published on when the backend
	// decides it (Swarm: the node that runs it); "" = the spec's PublishIP.
	HostIP string
	IP     string // the container's address on its network
	// Partial is set when the container came from a listing: StartedAt,
	// FinishedAt, ExitCode, OOMKilled and Error are unknown until an inspect.
	Partial bool
}

// ContainerEvent is one container event from the engine.
type ContainerEvent struct {
	ID     string
	Action string // create, start, die, oom, destroy, ...
	Labels map[string]string
}

// Builder is what locking and building an env need from an engine.
type Builder interface {
	// ImageInspect returns an image's id and labels, or an errdefs not-found error.
	ImageInspect(ctx context.Context, ref string) (ImageInfo, error)
	// RunCapture runs a throw-away container to completion and returns its
	// output and exit code; the container is removed in every case.
	RunCapture(ctx context.Context, spec RunSpec) (RunResult, error)
	// Build builds a context and tags the result; each line of the engine's
	// output goes to onLine.
	Build(ctx context.Context, spec BuildSpec, onLine func(BuildLine)) (imageID string, err error)
}

// ImageInfo is what the builder and doctor need to know of an image.
type ImageInfo struct {
	ID     string
	Labels map[string]string
	Size   int64
	// Layers is how many filesystem layers the image has.
	Layers int
}

// Puller is a Runtime whose engine pulls images when asked (one Docker
// engine; Swarm's nodes pull for themselves).
type Puller interface {
	Pull(ctx context.Context, ref string, progress func(PullProgress)) error
}

// PullProgress is how far a pull is: layers known and done, bytes.
type PullProgress struct {
	Layers, Done int
	Bytes, Total int64
}

// ImageSummary is an image in a listing (untagged images have no Tags).
type ImageSummary struct {
	ID     string
	Tags   []string
	Labels map[string]string
	Size   int64
}

// RunSpec is a throw-away container for locking.
type RunSpec struct {
	Image   string
	Cmd     []string
	Network string // "" = default bridge, "host" to reach an index on 127.0.0.1
	Labels  map[string]string
	Env     []string // KEY=VALUE
	// Files are written into the container before it starts (absolute
	// path -> content; owned by root, mode 0644, parent directories
	// made). For inputs too large for an environment variable: Linux caps
	// one at 128 KiB, and a CA bundle is often larger.
	Files map[string][]byte
	// Collect, when set, is a directory in the container whose files are
	// handed to Collected, as a tar stream, after the command exits 0 and
	// before the container is removed. Output is for messages; files that
	// must arrive byte for byte come this way.
	Collect   string
	Collected func(tarStream io.Reader) error
}

// RunResult is what a throw-away container printed.
type RunResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// BuildSpec is one engine build.
type BuildSpec struct {
	Context io.Reader
	Tags    []string
	Labels  map[string]string
	Network string
	// NoCache builds every layer afresh.
	NoCache bool
	// BuildArgs are the Dockerfile's ARG values.
	BuildArgs map[string]string
}

// BuildLine is one line of the engine's build output.
type BuildLine struct {
	Stream string // a line of output
	Bytes  int64  // bytes transferred so far, if the line reports progress
}

// ImageStore reads images out of an engine and writes them in, as
// go-containerregistry images, so pushing to a registry and saving to an
// OCI archive share one path.
type ImageStore interface {
	// Image returns a local image by tag; an errdefs not-found error when absent.
	Image(ctx context.Context, tag string) (v1.Image, error)
	// WriteImage stores img in the engine under tag.
	WriteImage(ctx context.Context, tag string, img v1.Image) error
}

// LogFollower streams a container's log as it is written.
type LogFollower interface {
	// FollowLogs writes the last tail lines of id's log, then each new
	// line, until ctx ends or the container does.
	FollowLogs(ctx context.Context, id string, tail int, w io.Writer) error
}

// HomeStore keeps users' homes on the machines that run their servers
// (Swarm's node-pinned homes): where a home is, making and deleting it,
// and moving it to another machine.
type HomeStore interface {
	Ensure(ctx context.Context, h HomeSpec) (Home, error)
	Delete(ctx context.Context, h HomeSpec) error
	Move(ctx context.Context, h HomeSpec, node string) (HomeMove, error)
}

// Prepuller puts an image on every machine that can run servers before
// any start needs it.
type Prepuller interface {
	// Prepull returns the reference servers run the image by (a digest);
	// progress hears each machine's changes.
	Prepull(ctx context.Context, ref string, labels map[string]string, progress func(PrepullEvent)) (string, error)
}

// PrepullEvent is one machine's progress in a Prepull.
type PrepullEvent struct {
	Node  string // the machine's host name and address
	State string // "pulling", "ready" or "failed"
	Err   string // why it failed
	Ready int    // machines that have the image so far
	Nodes int    // machines that will have it
}

// Set is one backend as its factory (spawnd/backends) made it: the Runtime
// every backend is, and each optional capability, nil (or false) when the
// backend lacks it. What a backend can do is declared here once: callers
// take the capabilities they need from the Set, and a nil one is an
// explicit answer ("this backend cannot …"), never a different path found
// by a type assertion.
type Set struct {
	Name    string  // the backend's name in engine.backend
	Runtime Runtime // the servers' lifecycle
	// Builder and Images build envs and move their images; every build is
	// normalized through Images (same lock, same digest). Both or neither.
	Builder Builder
	Images  ImageStore
	// BuildsInPlace: an image Builder makes is where servers run from, so a
	// start may build the image it needs (one engine). On Swarm an image
	// must reach the registry first.
	BuildsInPlace bool
	// Puller pulls an env's image for a start (pull policies). nil: a start
	// never pulls; the image must be where the backend runs it from.
	Puller Puller
	// Logs follows a server's log (spawnd logs --follow). nil: a log can
	// be read, not followed.
	Logs LogFollower
	// Prepull puts an image on every machine (spawnd image prepull).
	Prepull Prepuller
	// NodeHomes keeps homes on the machines that run the servers
	// (engine.homes: node), at root there, with helpers on network. nil:
	// homes live under homes_root on the daemon's host.
	NodeHomes func(root, network string) HomeStore
	// LateMounts: the backend's containers run on the daemon's own host and
	// take Mount.Late, so a home mounted on a running server's slot reaches
	// it (the warm pool, issue #28). false: every mount exists before the
	// container does.
	LateMounts bool
	// Promote gives a Background container the CPU weight spec asks for,
	// as it runs (a warm server that a start took). nil: none is given.
	Promote func(ctx context.Context, id string, spec ContainerSpec) error
	// Close releases the backend's clients.
	Close func() error
}
