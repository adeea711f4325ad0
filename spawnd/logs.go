package spawnd

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

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
	m.view.mu.Lock()
	if rec := m.view.servers[k]; rec != nil {
		id, secrets = rec.containerID, rec.secrets
	}
	m.view.mu.Unlock()
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

// logTailLines bounds the container log a failed start reports.
const (
	logTailLines = 20
	logLineMax   = 300
)

// logTail is the end of a container's log, bounded in lines and bytes, with
// every secret value replaced and control characters dropped. It is written
// for the person on the spawn page; an error reading it yields "".
func (m *Manager) logTail(ctx context.Context, id string, secrets []string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := m.rt.Logs(ctx, id, logTailLines)
	if err != nil {
		m.log.Warn("reading the log of a failed server", "container_id", short(id), "err", err)
		return ""
	}
	return redactTail(out, secrets)
}

// redactTail bounds and cleans a log tail; see logTail.
func redactTail(out string, secrets []string) string { return redactLog(out, secrets, logTailLines) }

// tokenLike is what a log line must not show even when the secret is not
// known (an adopted server): long hex strings (JupyterHub's tokens) and
// token= parameters.
var tokenLike = regexp.MustCompile(`(?i)(token=)[^&\s"']+|\b[0-9a-f]{32,}\b`)

// redactLog bounds a log to its last maxLines lines of at most logLineMax
// bytes, with every secret value and anything token-like replaced and
// control characters dropped.
func redactLog(out string, secrets []string, maxLines int) string {
	for _, s := range secrets {
		out = strings.ReplaceAll(out, s, "[redacted]")
	}
	out = tokenLike.ReplaceAllStringFunc(out, func(m string) string {
		if strings.HasPrefix(strings.ToLower(m), "token=") {
			return m[:len("token=")] + "[redacted]"
		}
		return "[redacted]"
	})
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	for i, l := range lines {
		l = strings.Map(func(r rune) rune {
			if r == '\t' {
				return ' '
			}
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, strings.ToValidUTF8(l, "?"))
		if len(l) > logLineMax {
			l = strings.ToValidUTF8(l[:logLineMax], "") + "…"
		}
		lines[i] = l
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// secretValues are the values of a container's environment that must never
// be shown: tokens, secrets, passwords, keys.
func secretValues(env []string) []string {
	var out []string
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || len(v) < 6 {
			continue
		}
		uk := strings.ToUpper(k)
		for _, w := range []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"} {
			if strings.Contains(uk, w) {
				out = append(out, v)
				break
			}
		}
	}
	// Longest first, so a secret that contains another is replaced whole.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// maxLogLines bounds what Logs returns.
const maxLogLines = 2000

// Logs returns the last lines (at most tail, at most maxLogLines) of a
// server's container log, bounded and with secrets and token-like strings
// replaced: for an admin finding out why a server died.
func (m *Manager) Logs(ctx context.Context, user, server string, tail int) (string, error) {
	id, secrets, err := m.logSource(user, server)
	if err != nil {
		return "", err
	}
	tail = boundTail(tail)
	out, err := m.rt.Logs(ctx, id, tail)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return "", errorf(ErrNotFound, "the server's container is gone")
		}
		return "", m.engineErr("reading the log", err)
	}
	return redactLog(out, secrets, tail), nil
}
