package swarm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/spawnd/spawnd/spawnd/engineapi"
)

// Pin resolves an env image to the reference by digest services run: the
// image must be in the registry (a reference without one is looked up in
// Options.Registry). A missing image is an errdefs not-found error that
// names the push to run.
func (s *Swarm) Pin(ctx context.Context, ref string) (string, error) {
	full := ref
	if s.opt.Registry != "" && !hasRegistry(ref) {
		full = s.opt.Registry + "/" + ref
	}
	if !hasRegistry(full) {
		return "", fmt.Errorf("image %s: no registry in the reference and engine.registry is not set; every node pulls from a registry "+
			"(set engine.registry and run spawnd image push ENV REGISTRY): %w", ref, errdefs.ErrInvalidArgument)
	}
	var nopts []name.Option
	if s.opt.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(full, nopts...)
	if err != nil {
		return "", fmt.Errorf("image %s: %w: %w", full, err, errdefs.ErrInvalidArgument)
	}
	if d, ok := r.(name.Digest); ok && s.opt.Registry == "" {
		return d.String(), nil // pinned already, and no registry of ours to ask
	}
	desc, err := remote.Head(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(s.opt.Keychain))
	if err != nil {
		var te *transport.Error
		reg := r.Context().RegistryStr()
		switch {
		case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
			return "", fmt.Errorf("image %s is not in the registry %s; push it: spawnd image push ENV %s: %w", full, reg, reg, errdefs.ErrNotFound)
		case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
			return "", fmt.Errorf("the registry %s refused spawnd for %s (%d %s): log in as the user spawnd runs as "+
				"(docker login %s, which writes its ~/.docker/config.json or $DOCKER_CONFIG), or check that account's access: %w",
				reg, full, te.StatusCode, http.StatusText(te.StatusCode), reg, errdefs.ErrUnauthenticated)
		}
		return "", fmt.Errorf("asking the registry %s for %s: %w: %w", r.Context().RegistryStr(), full, err, errdefs.ErrUnavailable)
	}
	return r.Context().Digest(desc.Digest.String()).String(), nil
}

// hasRegistry reports whether a reference names its registry (a first
// component with a dot or a colon, or localhost).
func hasRegistry(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return ok && (strings.ContainsAny(first, ".:") || first == "localhost")
}

// CheckImage implements backend.Runtime: the image is in the registry.
func (s *Swarm) CheckImage(ctx context.Context, ref string) error {
	_, err := s.Pin(ctx, ref)
	return err
}

// registryAuth is the X-Registry-Auth value for ref's registry ("" = anonymous).
func (s *Swarm) registryAuth(ref string) (string, error) {
	return engineapi.RegistryAuth(ref, s.opt.Keychain)
}
