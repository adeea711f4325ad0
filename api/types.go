// Package api is spawnd's HTTP contract: the versioned request and response
// types, the closed set of error codes, and a Go client. It imports neither the
// Docker engine client nor the daemon, so a caller (the CLI, a test, another
// tool) can speak to spawnd without pulling in the daemon. The server side lives
// in api/server; the same contract is described for other languages in
// openapi.yaml.
package api

import (
	"errors"
	"fmt"
	"time"
)

// Version is the API version prefix of every path.
const Version = "v1"

// State is the lifecycle state of one user server.
type State string

// The states a server can be in. They map onto JupyterHub's Spawner.poll():
// pending and running are "still alive" (poll returns None), stopped and
// failed are "gone" (poll returns the exit code).
const (
	StatePending State = "pending"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StateFailed  State = "failed"
)

// StartRequest is the body of a start call. It names an env and a resource
// profile that the daemon's config defines; it can never carry an image, a
// mount, a capability or any other engine option: the decoder rejects unknown
// fields.
type StartRequest struct {
	// Env is the name of a team environment from the daemon's config; empty
	// means the default.
	Env string `json:"env,omitempty"`
	// Profile is the name of a resource profile; empty means the default.
	Profile string `json:"profile,omitempty"`
	// Environment is passed to the container. Values are never logged.
	Environment map[string]string `json:"environment,omitempty"`
	// Cmd overrides the env's command (JupyterHub's Spawner.cmd); empty
	// means the env's own command.
	Cmd []string `json:"cmd,omitempty"`
	// Args are appended to the command (JupyterHub's Spawner.get_args()).
	Args []string `json:"args,omitempty"`
	// Groups are the user's JupyterHub groups; reserved for team policies.
	Groups []string `json:"groups,omitempty"`
}

// Server is what the daemon knows about one user server.
type Server struct {
	User   string `json:"user"`
	Server string `json:"server"`
	State  State  `json:"state"`
	// Ready is true once the single-user port accepts connections.
	Ready bool `json:"ready"`
	// ExitCode is set when the server is stopped or failed.
	ExitCode *int `json:"exit_code,omitempty"`
	// Reason says why a server stopped or failed ("oom_killed", "exited",
	// "start_failed: ...").
	Reason string `json:"reason,omitempty"`
	// LogTail is the end of the container's log when the server failed
	// (its start, or an exit nobody asked for): at most 20 lines, secrets
	// and token-like strings replaced.
	LogTail string `json:"log_tail,omitempty"`
	// Host and Port are where the hub reaches the single-user server.
	Host        string    `json:"host,omitempty"`
	Port        int       `json:"port,omitempty"`
	Env         string    `json:"env"`
	Profile     string    `json:"profile,omitempty"`
	LockDigest  string    `json:"lock_digest,omitempty"`
	Image       string    `json:"image,omitempty"`
	ImageID     string    `json:"image_id,omitempty"`
	ContainerID string    `json:"container_id,omitempty"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	// Outdated is true when the server's lock digest is no longer its env's.
	Outdated bool `json:"outdated,omitempty"`
	// Warm is true when the server began as a warm server of a pool (as
	// this daemon saw its start; a daemon restart forgets it).
	Warm bool `json:"warm,omitempty"`
}

// Pool is one pool of warm servers (spawnd.yaml pools).
type Pool struct {
	Name    string `json:"name"` // env/profile
	Env     string `json:"env"`
	Profile string `json:"profile"`
	// Want is how many warm servers it keeps now (its size, or its window's).
	Want int `json:"want"`
	// Ready are warm and waiting; Warming are booting.
	Ready   int `json:"ready"`
	Warming int `json:"warming"`
	// Taken and Missed count this daemon's starts of the pool's env and
	// profile that took a warm server, and that found none ready.
	Taken  int `json:"taken"`
	Missed int `json:"missed"`
	// Cold says why the env cannot be pre-warmed (its starts boot cold).
	Cold string `json:"cold,omitempty"`
}

// PoolList is the answer of the pools call.
type PoolList struct {
	Pools []Pool `json:"pools"`
}

// ServerList is the answer of the list call.
type ServerList struct {
	Servers []Server `json:"servers"`
}

// ProgressEvent is one step of a start, in JupyterHub's Spawner.progress()
// shape plus a machine-readable step and terminal flags.
type ProgressEvent struct {
	Progress int    `json:"progress"`
	Message  string `json:"message"`
	Step     string `json:"step"`
	Ready    bool   `json:"ready,omitempty"`
	Failed   bool   `json:"failed,omitempty"`
}

// Progress steps, in order.
const (
	StepAccepted  = "accepted"
	StepNotice    = "notice" // something the user should know before the server starts (a rollout moved it)
	StepImage     = "image"
	StepHome      = "home"
	StepPlacing   = "placing"
	StepCreated   = "created"
	StepStarted   = "started"
	StepListening = "listening"
	StepFailed    = "failed"
)

// BuildEvent is one step of an env build the daemon runs (POST
// /v1/envs/{env}/build), the same events `spawnd build` shows.
type BuildEvent struct {
	Time      time.Time `json:"time"`
	Phase     string    `json:"phase"`
	Step      string    `json:"step"`
	Message   string    `json:"message"`
	ElapsedMS int64     `json:"elapsed_ms"`
	Bytes     int64     `json:"bytes,omitempty"`
	Cached    bool      `json:"cached,omitempty"`
	// Done is set on the last event; Tag, ImageID and Built report the
	// result, Error a failure.
	Done    bool   `json:"done,omitempty"`
	Tag     string `json:"tag,omitempty"`
	ImageID string `json:"image_id,omitempty"`
	Built   bool   `json:"built,omitempty"`
	Error   string `json:"error,omitempty"`
}

// EnvInfo describes one env a hub may offer.
type EnvInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Image       string `json:"image"`
	LockDigest  string `json:"lock_digest,omitempty"`
	// Port is the port the env's single-user server listens on in its container.
	Port    int  `json:"port,omitempty"`
	Default bool `json:"default,omitempty"`
}

// ProfileInfo describes one resource profile.
type ProfileInfo struct {
	Name     string  `json:"name"`
	MemoryMB int64   `json:"memory_mb,omitempty"`
	CPUs     float64 `json:"cpus,omitempty"`
	Pids     int64   `json:"pids,omitempty"`
	Default  bool    `json:"default,omitempty"`
}

// Options is the answer of the options call: what a hub may offer a user
// with the given groups.
type Options struct {
	Envs     []EnvInfo     `json:"envs"`
	Profiles []ProfileInfo `json:"profiles"`
	// Network tells the hub how user containers reach it.
	Network NetworkInfo `json:"network"`
}

// NetworkInfo describes the user containers' network.
type NetworkInfo struct {
	Name string `json:"name"`
	// Mode is publish (ports on the host) or network (a hub on the same network).
	Mode string `json:"mode"`
	// Gateway is the host's address on the user network: a hub on the host
	// must listen there (not on 127.0.0.1) for containers to reach its API.
	Gateway string `json:"gateway,omitempty"`
}

// VersionInfo is the answer of the version call.
type VersionInfo struct {
	Version       string `json:"version"`
	Revision      string `json:"revision,omitempty"` // the commit the daemon was built from
	Modified      bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	GoVersion     string `json:"go_version,omitempty"`
	APIVersion    string `json:"api_version"`
	EngineVersion string `json:"engine_version,omitempty"`
	EngineAPI     string `json:"engine_api_version,omitempty"`
}

// Health is the answer of the health call (no token needed).
type Health struct {
	Status string `json:"status"`
	Engine string `json:"engine"`
}

// Code is the closed set of error codes a caller can branch on.
type Code string

// Error codes and the HTTP status each maps to.
const (
	CodeInvalid      Code = "invalid"       // 400: the request is wrong; the message says what to fix
	CodeUnauthorized Code = "unauthorized"  // 401: missing or wrong token
	CodeForbidden    Code = "forbidden"     // 403: the user's groups do not allow this env or profile
	CodeNotFound     Code = "not_found"     // 404
	CodeConflict     Code = "conflict"      // 409: the request contradicts current state
	CodeTooLarge     Code = "too_large"     // 413
	CodeUnavailable  Code = "unavailable"   // 503: the engine is not reachable, or the daemon has not synced with it yet
	CodeServerFailed Code = "server_failed" // 502: the user's server exited (or never listened) during its start
	CodeInternal     Code = "internal"      // 500
)

// HTTPStatus maps a code to its HTTP status.
func (c Code) HTTPStatus() int {
	switch c {
	case CodeInvalid:
		return 400
	case CodeUnauthorized:
		return 401
	case CodeForbidden:
		return 403
	case CodeNotFound:
		return 404
	case CodeConflict:
		return 409
	case CodeTooLarge:
		return 413
	case CodeUnavailable:
		return 503
	case CodeServerFailed:
		return 502
	default:
		return 500
	}
}

// Error is both the JSON error body ({"error": {"code": ..., "message": ...}})
// and a Go error that callers can inspect with ErrorCode.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// ErrorBody is the envelope of every error answer.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// Errorf makes an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, CodeInternal
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrorMessage returns the message of the first *Error in err's chain, or a
// generic text for other errors (their details are for logs, not callers).
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error; see the daemon's log"
}

// HomeMoveRequest is the body of POST /v1/users/{user}/home/move.
type HomeMoveRequest struct {
	// Node is the node to move the home to: its host name, or its ID.
	Node string `json:"node"`
}

// HomeMove is what moving a node-pinned home did.
type HomeMove struct {
	From    string `json:"from"`     // the node it left, by host name
	To      string `json:"to"`       // the node it is on now
	Bytes   int64  `json:"bytes"`    // the size of the archive that crossed
	SHA256  string `json:"sha256"`   // its digest, as both ends computed it
	OldCopy string `json:"old_copy"` // the name the home keeps on the node it left
}

// HomeMigration is what POST /v1/users/{user}/home/migrate did: the home
// made under home_owner env now belongs to its person's uid.
type HomeMigration struct {
	FromUID  int  `json:"from_uid"`
	ToUID    int  `json:"to_uid"`
	Files    int  `json:"files"`    // files and directories given to to_uid
	Migrated bool `json:"migrated"` // false: it already belonged to its person
}

// EnvReport is the answer of GET /v1/envs: each env's current lock, and
// the servers on each lock (who still runs an older one).
type EnvReport struct {
	Envs []EnvDrift `json:"envs"`
}

// EnvDrift is one env in an EnvReport.
type EnvDrift struct {
	Env string `json:"env"`
	// Configured is false for an env the config no longer has but servers still run.
	Configured bool   `json:"configured"`
	LockDigest string `json:"lock_digest"` // the current lock
	Image      string `json:"image"`       // its image
	// ImageSize is the current image's size in bytes (0: not on the engine).
	ImageSize int64 `json:"image_size,omitempty"`
	// Built is when the current lock was made (the image's
	// org.opencontainers.image.created; builds are reproducible, so the
	// image carries the lock's time).
	Built   string        `json:"built,omitempty"`
	Current int           `json:"current"` // servers on the current lock
	Older   int           `json:"older"`   // servers on any older lock
	Locks   []LockServers `json:"locks"`   // the current lock first
}

// LockServers is the servers of an env that run one lock.
type LockServers struct {
	LockDigest string      `json:"lock_digest"`
	Current    bool        `json:"current"`
	Image      string      `json:"image"`
	Servers    []ServerRef `json:"servers"`
}

// ServerRef names a server in a report.
type ServerRef struct {
	User   string `json:"user"`
	Server string `json:"server,omitempty"`
	State  State  `json:"state"`
}

// RolloutRequest is the body of POST /v1/envs/{env}/rollout.
type RolloutRequest struct {
	All         bool     `json:"all,omitempty"`          // every server on an older lock
	Users       []string `json:"users,omitempty"`        // only these users' servers
	IdleSeconds int      `json:"idle_seconds,omitempty"` // otherwise: idle at least this long (default 3600)
	DryRun      bool     `json:"dry_run,omitempty"`      // say who would move
	Concurrency int      `json:"concurrency,omitempty"`  // stops at once (default 4)
}

// RolloutResult is what a rollout did, server by server.
type RolloutResult struct {
	Env   string        `json:"env"`
	To    string        `json:"to"` // the current lock digest
	Items []RolloutItem `json:"items"`
}

// RolloutItem is one server a rollout looked at.
type RolloutItem struct {
	User   string `json:"user"`
	Server string `json:"server,omitempty"`
	From   string `json:"from"` // its lock digest
	Moved  bool   `json:"moved"`
	Why    string `json:"why"`
}
