// Package engineapi is what both Docker-API backends (spawnd/docker, one
// engine; spawnd/swarm, a swarm manager) need from the Engine API and
// neither owns: the capped reader of the engine's multiplexed log stream,
// the X-Registry-Auth header from a keychain, and the engine's info in
// backend terms. It lives below both so that neither backend imports the
// other.
package engineapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// LogLimit is the most of a log ReadLogs keeps.
const LogLimit = 64 << 10

// ReadLogs reads an engine's multiplexed log stream (stdout and stderr
// interleaved; a container's log or a service's) into a string of at most
// LogLimit bytes.
func ReadLogs(r io.Reader) (string, error) {
	var buf bytes.Buffer
	w := &limitWriter{w: &buf, n: LogLimit}
	if _, err := stdcopy.StdCopy(w, w, r); err != nil && !errors.Is(err, errLimit) {
		return buf.String(), err
	}
	return buf.String(), nil
}

var errLimit = errors.New("log limit reached")

// limitWriter keeps at most n bytes.
type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		_, _ = l.w.Write(p[:l.n])
		l.n = 0
		return 0, errLimit
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// RegistryAuth is the X-Registry-Auth value the engine wants for ref's
// registry, from the keychain ("" = anonymous). It carries a secret: never
// log it.
func RegistryAuth(ref string, kc authn.Keychain) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	a, err := kc.Resolve(r.Context())
	if err != nil || a == authn.Anonymous {
		return "", err
	}
	cfg, err := a.Authorization()
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(registry.AuthConfig{Username: cfg.Username, Password: cfg.Password, Auth: cfg.Auth,
		IdentityToken: cfg.IdentityToken, RegistryToken: cfg.RegistryToken, ServerAddress: r.Context().RegistryStr()})
	if err != nil {
		return "", err
	}
	return base64.URLEncoding.EncodeToString(b), nil
}

// Info asks the engine behind cli for what the daemon reports of it; kind
// is the backend's name (docker, swarm).
func Info(ctx context.Context, cli *client.Client, kind string) (backend.Info, error) {
	res, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return backend.Info{}, fmt.Errorf("asking the engine for its info: %w", err)
	}
	return backend.Info{
		Backend:     kind,
		Version:     res.Info.ServerVersion,
		APIVersion:  cli.ClientVersion(),
		RuncVersion: res.Info.RuncCommit.ID,
		LiveRestore: res.Info.LiveRestoreEnabled,
		GPURuntime:  res.Info.Runtimes["nvidia"].Path != "",
	}, nil
}
