package spawnd

import (
	"errors"
	"fmt"
)

// The kinds of error the core returns. Match them with errors.Is; the API
// maps each to one HTTP status at its edge (api/server), and any error of no
// kind is internal: its details go to the log, never to the caller.
var (
	// ErrInvalid: the request is wrong; the message says what to fix.
	ErrInvalid = errors.New("invalid")
	// ErrForbidden: the user's groups do not allow this env or profile.
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound: no such server, or no such home.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request contradicts current state (an image not
	// built, a home being deleted, a container spawnd did not make).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the engine is not reachable, or the daemon has not
	// synced with it yet; try again.
	ErrUnavailable = errors.New("unavailable")
	// ErrServerFailed: the user's server exited, or never listened, during
	// its start.
	ErrServerFailed = errors.New("server failed")
)

// Error is an error of the core: a kind, a message written for the person
// who asked, and an optional cause (host paths, engine messages) that is
// for the daemon's log only. Error() includes the cause; Message does not.
type Error struct {
	Kind  error  // one of the Err* kinds; nil for an internal error
	Msg   string // safe to show to a hub user
	Cause error  // for logs only
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Msg + ": " + e.Cause.Error()
	}
	return e.Msg
}

// Is matches the error's kind.
func (e *Error) Is(target error) bool { return e.Kind != nil && target == e.Kind }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// errorf makes an error of kind with a message for the caller.
func errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// internal makes an internal error: msg for the caller, cause for the log.
func internal(cause error, format string, args ...any) *Error {
	return &Error{Msg: fmt.Sprintf(format, args...), Cause: cause}
}

// Kinds lists the error kinds, for the edge's mapping table and its test.
var Kinds = []error{ErrInvalid, ErrForbidden, ErrNotFound, ErrConflict, ErrUnavailable, ErrServerFailed}

// KindOf returns the kind of err (one of Kinds), or nil for an internal error.
func KindOf(err error) error {
	for _, k := range Kinds {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}

// Message is what a caller may be told of err: the message of the first
// core error in its chain, or a pointer to the log for anything else.
func Message(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Msg
	}
	return "internal error; see the daemon's log"
}
