package swarm

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// EnsureNetwork implements backend.Runtime: an attachable overlay network.
// Overlays cannot keep containers on them apart, so spec.ICC must be true:
// the config says so knowingly (docs/SWARM.md).
func (s *Swarm) EnsureNetwork(ctx context.Context, n backend.NetworkSpec) (backend.NetworkInfo, error) {
	if err := s.checkManager(ctx); err != nil {
		return backend.NetworkInfo{}, err
	}
	if !n.ICC {
		return backend.NetworkInfo{}, fmt.Errorf("network.icc: a swarm overlay network cannot block traffic between the servers on it; "+
			"set network.icc: true to accept that (each server still requires its own token; docs/SWARM.md): %w", errdefs.ErrInvalidArgument)
	}
	inspect := func() (client.NetworkInspectResult, error) {
		return s.cli.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{Scope: "swarm"})
	}
	res, err := inspect()
	if errdefs.IsNotFound(err) {
		_, err = s.cli.NetworkCreate(ctx, n.Name, client.NetworkCreateOptions{Driver: "overlay", Attachable: true, Scope: "swarm", Labels: n.Labels})
		if err != nil && !errdefs.IsConflict(err) {
			return backend.NetworkInfo{}, fmt.Errorf("creating overlay network %s: %w", n.Name, err)
		}
		res, err = inspect()
	}
	// The manager allocates a new network a moment after creating it;
	// until then it reports no driver and no subnet.
	if err == nil && res.Network.Driver == "" {
		werr := until(ctx, backoff(20*time.Millisecond, 500*time.Millisecond), func() (bool, error) {
			res, err = inspect()
			return err != nil || res.Network.Driver != "", nil
		})
		if werr != nil {
			return backend.NetworkInfo{}, fmt.Errorf("network %s: the manager did not allocate it: %w", n.Name, werr)
		}
	}
	if err != nil {
		return backend.NetworkInfo{}, fmt.Errorf("inspecting network %s: %w", n.Name, err)
	}
	if res.Network.Driver != "overlay" || !res.Network.Attachable {
		return backend.NetworkInfo{}, fmt.Errorf("network.name: the network %q exists with driver %q (attachable %v); swarm needs an attachable overlay: "+
			"remove it (docker network rm %s) or name another network: %w", n.Name, res.Network.Driver, res.Network.Attachable, n.Name, errdefs.ErrInvalidArgument)
	}
	return backend.NetworkInfo{}, nil
}
