package swarm

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// PrepullEvent is one node's progress in Prepull.
type PrepullEvent = backend.PrepullEvent

// Prepull puts an env image on every node that can run servers, so that no
// start waits for a pull: a global job of the image (one task per active
// node, each pulling it by digest and exiting at once) that is removed at
// the end. progress hears each node's changes. The error names every node
// that failed and why.
func (s *Swarm) Prepull(ctx context.Context, ref string, labels map[string]string, progress func(PrepullEvent)) (string, error) {
	image, err := s.Pin(ctx, ref)
	if err != nil {
		return "", err
	}
	auth, err := s.registryAuth(image)
	if err != nil {
		return "", fmt.Errorf("registry credentials for %s: %w", image, err)
	}
	l := cloneWith(labels, prepullLabel, "true")
	res, err := s.cli.ServiceCreate(ctx, client.ServiceCreateOptions{EncodedRegistryAuth: auth, Spec: swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "spawnd-prepull-" + shortDigest(image), Labels: l},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Labels: l, Command: []string{"sh", "-c", "exit 0"},
				CapabilityDrop: []string{"ALL"}, User: "65534:65534"},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}})
	if err != nil {
		return "", fmt.Errorf("creating the prepull job for %s: %w", image, err)
	}
	defer s.removeQuietly(ctx, res.ID)
	f := client.Filters{}
	f.Add("service", res.ID)
	seen := map[string]string{} // node ID -> state reported
	ready, nodeCount := 0, 0
	err = until(ctx, every(250*time.Millisecond), func() (bool, error) {
		tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
		if err != nil {
			return false, fmt.Errorf("following the prepull of %s: %w", image, err)
		}
		nodes, err := s.nodes(ctx)
		if err != nil {
			return false, err
		}
		failed, done := []string{}, 0
		ready, nodeCount = 0, len(tasks.Items)
		states := make(map[string]string, len(tasks.Items))
		for _, t := range tasks.Items {
			state := "pulling"
			switch t.Status.State {
			case swarm.TaskStateRunning, swarm.TaskStateComplete:
				state = "ready"
				ready++
				if t.Status.State == swarm.TaskStateComplete {
					done++
				}
			case swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned:
				state = "failed"
				done++
				n := nodes[t.NodeID]
				failed = append(failed, fmt.Sprintf("%s (%s): %s", n.host, n.addr, t.Status.Err))
			}
			states[t.NodeID] = state
		}
		for _, t := range tasks.Items {
			if state := states[t.NodeID]; seen[t.NodeID] != state {
				seen[t.NodeID] = state
				if progress != nil {
					n := nodes[t.NodeID]
					progress(PrepullEvent{Node: n.host + " (" + n.addr + ")", State: state, Err: t.Status.Err, Ready: ready, Nodes: len(tasks.Items)})
				}
			}
		}
		if len(tasks.Items) > 0 && done == len(tasks.Items) {
			if len(failed) > 0 {
				return false, fmt.Errorf("%s is on %d of %d nodes; it failed on %s", image, ready, len(tasks.Items), strings.Join(failed, "; "))
			}
			return true, nil
		}
		return false, nil
	})
	switch {
	case err == nil:
		return image, nil
	case err == ctx.Err():
		return "", fmt.Errorf("prepulling %s: %d of %d nodes ready when the deadline came: %w", image, ready, nodeCount, err)
	}
	return image, err
}

// prepullLabel marks a prepull job (a sweep may remove one a killed run left).
const prepullLabel = "io.spawnd.prepull"

func shortDigest(ref string) string {
	_, d, _ := strings.Cut(ref, "@sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}
