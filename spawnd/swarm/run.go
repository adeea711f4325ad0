package swarm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// Run implements backend.Runtime: create the service and wait until its
// task runs, ends, or waits for a node longer than PendingTimeout. A task
// that never ran (rejected: an image no node can pull, a mount source
// missing on the node) and a task no node takes leave no service behind;
// a server that ran and exited is returned as exited, for its log.
func (s *Swarm) Run(ctx context.Context, c backend.ContainerSpec) (backend.Container, error) {
	if c.GPUs != nil {
		return backend.Container{}, fmt.Errorf("gpus %s: %w", c.GPUs, ErrNoGPUs)
	}
	image, err := s.Pin(ctx, c.Image)
	if err != nil {
		return backend.Container{}, err
	}
	auth, err := s.registryAuth(image)
	if err != nil {
		return backend.Container{}, fmt.Errorf("registry credentials for %s: %w", image, err)
	}
	hostPort, release := 0, func() {}
	if c.PublishIP != "" {
		if hostPort, release, err = s.ports.take(ctx, s.cli); err != nil {
			return backend.Container{}, err
		}
	}
	res, err := s.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: s.serviceSpec(c, image, hostPort), EncodedRegistryAuth: auth})
	release()
	if err != nil {
		if strings.Contains(err.Error(), "name conflicts with an existing object") && !errdefs.IsConflict(err) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrConflict)
		}
		return backend.Container{}, fmt.Errorf("creating service %s: %w", c.Name, err)
	}
	begun, said := time.Now(), ""
	var got observed
	var ran backend.Container
	// The answer is the user's wait: ask every 25 ms while a task usually
	// starts (a few seconds; three small calls to the manager each time),
	// then every 250 ms (a pull, a full swarm).
	werr := until(ctx, quickThen(25*time.Millisecond, 5*time.Second, 250*time.Millisecond), func() (bool, error) {
		var err error
		got, err = s.inspect(ctx, res.ID)
		switch {
		case err != nil && ctx.Err() != nil:
			return false, fmt.Errorf("service %s: %w", c.Name, ctx.Err())
		case err != nil:
			got = observed{} // keep asking until the deadline: a manager may be busy
			return false, nil
		case got.State == backend.Running, got.State == backend.Exited && got.taskRan:
			ran = got.Container
			return true, nil
		case got.State == backend.Exited:
			return false, fmt.Errorf("service %s: no node could start it: %s: %w", c.Name, got.Error, classify(got.Error))
		case got.pending && time.Since(begun) > s.opt.PendingTimeout:
			return false, &backend.Unplaceable{Reason: explainPending(got.Error, c),
				Err: fmt.Errorf("service %s: no node took it within %s: %s: %w", c.Name, s.opt.PendingTimeout, got.Error, errdefs.ErrUnavailable)}
		}
		if c.Waiting != nil {
			if msg := waitingFor(got); msg != "" && msg != said {
				said = msg
				c.Waiting(msg)
			}
		}
		return false, nil
	})
	switch {
	case werr == nil:
		return ran, nil
	case werr == ctx.Err():
		s.removeQuietly(ctx, res.ID)
		reason := ""
		if got.Error != "" {
			reason = " (" + got.Error + ")"
		}
		return backend.Container{}, fmt.Errorf("service %s: not running before the deadline%s: %w", c.Name, reason, ctx.Err())
	default:
		s.removeQuietly(ctx, res.ID)
		return backend.Container{}, werr
	}
}

// classify makes a task's error an errdefs class.
func classify(taskErr string) error {
	switch {
	case strings.Contains(taskErr, "No such image"), strings.Contains(taskErr, "not found"), strings.Contains(taskErr, "manifest unknown"):
		return errdefs.ErrNotFound
	case strings.Contains(taskErr, "invalid mount config"), strings.Contains(taskErr, "bind source path does not exist"):
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnavailable
}

// waitingFor says what a start waits for, in the spawn page's words.
func waitingFor(o observed) string {
	on := o.node.host
	switch o.taskState {
	case swarm.TaskStateNew, swarm.TaskStatePending, swarm.TaskStateAllocated:
		return "Waiting for a machine with room for the server"
	case swarm.TaskStateAssigned, swarm.TaskStateAccepted:
		return "Placed on " + on
	case swarm.TaskStatePreparing:
		return on + " is pulling the env's image (the first start there waits for it)"
	case swarm.TaskStateReady, swarm.TaskStateStarting:
		return "Starting on " + on
	}
	return ""
}

// explainPending turns Swarm's scheduling message into what to fix.
func explainPending(taskErr string, c backend.ContainerSpec) string {
	switch {
	case strings.Contains(taskErr, "insufficient resources"):
		return fmt.Sprintf("no node has %d MiB of memory free to reserve; try a smaller profile, or ask an admin to free or add a node", c.Memory>>20)
	case strings.Contains(taskErr, "constraints not satisfied"), strings.Contains(taskErr, "scheduling constraints"):
		return fmt.Sprintf("no node matches the profile's placement %v; ask an admin to label a node or change the profile", c.Placement)
	case taskErr == "":
		return "no node took it, and Swarm gave no reason"
	}
	return "no node took it: " + taskErr
}

func (s *Swarm) removeQuietly(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = s.Remove(rctx, id, 0)
}

// Remove implements backend.Runtime: remove the service, then wait (at most
// the grace and 15 s) until its task's container is gone, so a home is
// not written by two servers at once. The grace is the service's
// StopGracePeriod (Options.StopGrace); grace here only bounds the wait.
func (s *Swarm) Remove(ctx context.Context, id string, grace time.Duration) error {
	if _, err := s.cli.ServiceRemove(ctx, id, client.ServiceRemoveOptions{}); err != nil {
		if errdefs.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("removing service %s: %w", id, err)
	}
	f := client.Filters{}
	f.Add("service", id)
	wctx, cancel := context.WithTimeout(ctx, max(grace, s.opt.StopGrace)+15*time.Second)
	defer cancel()
	_ = until(wctx, every(200*time.Millisecond), func() (bool, error) {
		tasks, err := s.cli.TaskList(wctx, client.TaskListOptions{Filters: f})
		return err != nil || len(tasks.Items) == 0, nil
	}) // removed; the wait for its container to go is a courtesy
	return nil
}
