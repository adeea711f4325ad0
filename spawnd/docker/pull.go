package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
	"github.com/spawnd/spawnd/spawnd/engineapi"
)

var _ backend.Puller = (*Engine)(nil)

// Pull implements backend.Puller: the engine pulls ref with the daemon
// user's registry credentials (the Docker keychain: ~/.docker/config.json
// and its credential helpers), and progress hears each layer's.
func (e *Engine) Pull(ctx context.Context, ref string, progress func(backend.PullProgress)) error {
	auth, err := engineapi.RegistryAuth(ref, authn.DefaultKeychain)
	if err != nil {
		return fmt.Errorf("registry credentials for %s: %w", ref, err)
	}
	res, err := e.cli.ImagePull(ctx, ref, client.ImagePullOptions{RegistryAuth: auth})
	if err != nil {
		return classifyPull(ref, err.Error(), err)
	}
	defer res.Close()
	layers := map[string]*layerState{}
	var order []string
	for m, err := range res.JSONMessages(ctx) {
		if err != nil {
			return classifyPull(ref, err.Error(), err)
		}
		if m.Error != nil {
			return classifyPull(ref, m.Error.Message, errors.New(m.Error.Message))
		}
		if m.ID == "" || strings.HasPrefix(m.Status, "Pulling from") || strings.HasPrefix(m.Status, "Digest:") {
			continue
		}
		l := layers[m.ID]
		if l == nil {
			l = &layerState{}
			layers[m.ID] = l
			order = append(order, m.ID)
		}
		switch {
		case m.Status == "Pull complete" || m.Status == "Already exists":
			l.done = true
			if l.total > 0 {
				l.current = l.total
			}
		case m.Status == "Downloading" && m.Progress != nil && m.Progress.Total > 0:
			l.current, l.total = m.Progress.Current, m.Progress.Total
		}
		if progress != nil {
			p := backend.PullProgress{Layers: len(order)}
			for _, id := range order {
				if layers[id].done {
					p.Done++
				}
				p.Bytes += layers[id].current
				p.Total += layers[id].total
			}
			progress(p)
		}
	}
	return nil
}

type layerState struct {
	current, total int64
	done           bool
}

// classifyPull turns a pull's failure into an errdefs class with words an
// admin can act on.
func classifyPull(ref, msg string, err error) error {
	switch {
	case strings.Contains(msg, "unauthorized"), strings.Contains(msg, "authentication required"), strings.Contains(msg, "denied"), strings.Contains(msg, "no basic auth credentials"):
		return fmt.Errorf("the registry refused to give %s to the daemon's user; docker login to it as that user (the keychain: ~/.docker/config.json): %w", ref, errors.Join(errdefs.ErrUnauthenticated, err))
	case strings.Contains(msg, "not found"), strings.Contains(msg, "manifest unknown"):
		return fmt.Errorf("%s is not in its registry: %w", ref, errors.Join(errdefs.ErrNotFound, err))
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no such host"), strings.Contains(msg, "timeout"), strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("the registry of %s is not reachable: %w", ref, errors.Join(errdefs.ErrUnavailable, err))
	}
	return fmt.Errorf("pulling %s: %w", ref, err)
}
