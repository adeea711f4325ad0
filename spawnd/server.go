package spawnd

import "time"

// State is the lifecycle state of one user server.
type State string

// The states a server can be in. They map onto JupyterHub's Spawner.poll():
// pending and running are "still alive", stopped and failed are "gone".
const (
	StatePending State = "pending"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StateFailed  State = "failed"
)

// StartRequest is what a hub may ask of a start. It names an env and a
// resource profile the config defines; nothing in it chooses an image, a
// mount or an engine option.
type StartRequest struct {
	Env         string            // "" = the default env
	Profile     string            // "" = the default profile
	Environment map[string]string // passed to the container; never logged
	Cmd         []string          // overrides the env's command
	Args        []string          // appended to the command
	Groups      []string          // the user's JupyterHub groups (team policy)
}

// Server is what the core knows of one user server.
type Server struct {
	User, Server string
	State        State
	Ready        bool   // the single-user port accepts connections
	ExitCode     *int   // set when stopped or failed
	Reason       string // why it stopped or failed
	// LogTail is the end of the log of a server that failed (a start, or
	// an exit nobody asked for): bounded, secrets replaced.
	LogTail     string
	Host        string // where the hub reaches the single-user server
	Port        int
	Env         string
	Profile     string
	LockDigest  string
	Image       string
	ImageID     string
	ContainerID string
	StartedAt   time.Time
	Outdated    bool // its lock digest is no longer its env's
	Warm        bool // it began as a warm server of a pool (this daemon's view: a restart forgets it)
}

// Step is one step of a start, in order.
type Step string

// The steps of a start.
const (
	StepAccepted  Step = "accepted"
	StepNotice    Step = "notice" // what the user should know first (a rollout moved the server)
	StepImage     Step = "image"
	StepHome      Step = "home"
	StepPlacing   Step = "placing" // a backend that places (Swarm) waits for a node and its pull
	StepCreated   Step = "created"
	StepStarted   Step = "started"
	StepListening Step = "listening"
	StepFailed    Step = "failed"
)

// ProgressEvent is one step of a start, in JupyterHub's Spawner.progress()
// shape plus the step and terminal flags.
type ProgressEvent struct {
	Progress int
	Message  string
	Step     Step
	Ready    bool
	Failed   bool
}

// Offer is what a user with some groups may choose, for a hub's options
// form, and how containers reach the hub.
type Offer struct {
	Envs     []EnvOffer
	Profiles []ProfileOffer
	Network  UserNetwork
}

// EnvOffer is one env a hub may offer.
type EnvOffer struct {
	Name, Description, Image, LockDigest string
	Port                                 int
	Default                              bool
}

// ProfileOffer is one resource profile a hub may offer.
type ProfileOffer struct {
	Name     string
	MemoryMB int64
	CPUs     float64
	Pids     int64
	Default  bool
}

// UserNetwork is the user containers' network.
type UserNetwork struct {
	Name    string
	Mode    string // publish or network
	Gateway string // the host's address on it
}
