package spawnd

import (
	"bytes"
	"context"
	"io"

	"github.com/containerd/errdefs"
)

// logFollower is a backend that streams a container's log as it grows.
// FollowLogs writes the last tail lines of a server's log to w, then each
// line as the server writes it, until ctx ends or the container does:
// every line bounded, secrets and token-like strings replaced, as Logs.
func (m *Manager) FollowLogs(ctx context.Context, user, server string, tail int, w io.Writer) error {
	f := m.follower
	if f == nil {
		return errorf(ErrInvalid, "this engine backend cannot follow a log; leave out --follow")
	}
	id, secrets, err := m.logSource(user, server)
	if err != nil {
		return err
	}
	rw := &redactingWriter{w: w, secrets: secrets}
	err = f.FollowLogs(ctx, id, boundTail(tail), rw)
	rw.end()
	switch {
	case ctx.Err() != nil:
		return nil // the reader left
	case errdefs.IsNotFound(err):
		return errorf(ErrNotFound, "the server's container is gone")
	case err != nil:
		return m.engineErr("following the log", err)
	}
	return nil
}

// logSource is the container of a user's server and the secrets its log
// must not show.
func (m *Manager) logSource(user, server string) (id string, secrets []string, err error) {
	k, err := m.lookup(user, server)
	if err != nil {
		return "", nil, err
	}
	m.mu.Lock()
	if rec := m.servers[k]; rec != nil {
		id, secrets = rec.containerID, rec.secrets
	}
	m.mu.Unlock()
	if id == "" {
		return "", nil, errorf(ErrNotFound, "the user has no server (of that name) with a container; spawnd ps lists them")
	}
	return id, secrets, nil
}

// boundTail is a wanted number of log lines within 1..maxLogLines (0 or
// less: all there may be).
func boundTail(tail int) int {
	if tail <= 0 || tail > maxLogLines {
		return maxLogLines
	}
	return tail
}

// redactingWriter passes a log on line by line, each one bounded and with
// secrets replaced, flushing w after each write when it can.
type redactingWriter struct {
	w       io.Writer
	secrets []string
	buf     []byte
	err     error
}

func (r *redactingWriter) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	r.buf = append(r.buf, p...)
	for {
		i := bytes.IndexByte(r.buf, '\n')
		if i < 0 {
			break
		}
		r.line(r.buf[:i])
		r.buf = r.buf[i+1:]
	}
	if len(r.buf) > 4*logLineMax {
		r.line(r.buf) // a line longer than any shown: cut it here
		r.buf = r.buf[:0]
	}
	if f, ok := r.w.(interface{ Flush() }); ok && r.err == nil {
		f.Flush()
	}
	return len(p), r.err
}

func (r *redactingWriter) line(b []byte) {
	if r.err == nil {
		_, r.err = io.WriteString(r.w, redactLog(string(b), r.secrets, 1)+"\n")
	}
}

// end writes what is left of a last line without its newline.
func (r *redactingWriter) end() {
	if len(r.buf) > 0 {
		r.line(r.buf)
		r.buf = nil
	}
}
