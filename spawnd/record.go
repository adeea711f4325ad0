package spawnd

import (
	"context"
	"time"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// key names one server: a user and a server name ("" is the default server).
type key struct{ user, server string }

// opKind is what a flight on a key does.
type opKind int

const (
	opStart opKind = iota + 1
	opStop
)

// flight is one operation in progress on one server. Concurrent callers of the
// same kind share it (single flight); a caller of the other kind waits for it.
type flight struct {
	kind opKind
	done chan struct{}
	srv  Server
	err  error
}

func newFlight(kind opKind) *flight { return &flight{kind: kind, done: make(chan struct{})} }

// wait returns the flight's result once it lands, or ctx's error first.
func (f *flight) wait(ctx context.Context) (Server, error) {
	select {
	case <-f.done:
		return f.srv, f.err
	case <-ctx.Done():
		return Server{}, ctx.Err()
	}
}

// land records the result and wakes every waiter. Call once.
func (f *flight) land(srv Server, err error) {
	f.srv, f.err = srv, err
	close(f.done)
}

// probe is a readiness check running in the background for one container.
type probe struct {
	cancel context.CancelFunc
}

// record is the in-memory view of one server. Manager.mu guards it.
type record struct {
	srv         Server
	containerID string
	engineState string
	created     time.Time
	flight      *flight
	progress    *progressLog
	probe       *probe
	tokenHash   string // labels.HubToken of the current container
	// probeAddr is where readiness is checked: the container's own address
	// and port. A published port is no good: the engine's userland proxy
	// accepts connections there before the server listens.
	probeAddr string
	// ended is what the engine said of a container that ended before the
	// operation in flight learnt its ID: a server that exits at once can
	// report "die" before the engine's answer to its start arrives.
	ended map[string]backend.Container
	// secrets are the values of the current container's environment that
	// its log must never show (memory only; unknown for an adopted one).
	secrets []string
}

// begin starts an operation of kind on the record: no other may begin until
// it lands, and the readiness probe of the old container stops.
func (r *record) begin(kind opKind) *flight {
	r.flight = newFlight(kind)
	r.stopProbe()
	return r.flight
}

// end clears the operation in flight.
func (r *record) end() { r.flight, r.ended = nil, nil }

// starting reports whether a start is in flight.
func (r *record) starting() bool { return r.flight != nil && r.flight.kind == opStart }

// stopProbe ends the readiness probe, if one runs.
func (r *record) stopProbe() {
	if r.probe != nil {
		r.probe.cancel()
		r.probe = nil
	}
}

// gone ends the record's progress with the container gone; the caller then
// forgets the record.
func (r *record) gone() {
	r.stopProbe()
	if r.progress != nil {
		r.progress.add(progressGone)
	}
}

var progressGone = ProgressEvent{Progress: 100, Step: StepFailed, Message: "Server container is gone", Failed: true}

// forgetLocked drops a server whose container is gone. m.mu must be held.
func (m *Manager) forgetLocked(k key, rec *record) {
	rec.gone()
	if m.view.servers[k] == rec {
		delete(m.view.servers, k)
	}
}
