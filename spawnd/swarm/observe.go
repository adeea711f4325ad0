package swarm

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// observed is a service as a Container, with what Run needs besides.
type observed struct {
	backend.Container
	pending   bool // the task waits for a node
	taskRan   bool // the task's container existed
	taskState swarm.TaskState
	node      nodeInfo
}

// Inspect implements backend.Runtime: the service and its newest task.
func (s *Swarm) Inspect(ctx context.Context, idOrName string) (backend.Container, error) {
	o, err := s.inspect(ctx, idOrName)
	return o.Container, err
}

func (s *Swarm) inspect(ctx context.Context, idOrName string) (observed, error) {
	svc, err := s.cli.ServiceInspect(ctx, idOrName, client.ServiceInspectOptions{})
	if err != nil {
		return observed{}, fmt.Errorf("inspecting service %s: %w", idOrName, err)
	}
	f := client.Filters{}
	f.Add("service", svc.Service.ID)
	tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: f})
	if err != nil {
		return observed{}, fmt.Errorf("listing the tasks of service %s: %w", idOrName, err)
	}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return observed{}, err
	}
	return fromService(svc.Service, tasks.Items, nodes), nil
}

// nodeInfo is what a container needs of its node.
type nodeInfo struct {
	addr, host    string
	down, drained bool
}

func (s *Swarm) nodes(ctx context.Context) (map[string]nodeInfo, error) {
	res, err := s.cli.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing the swarm's nodes: %w", err)
	}
	out := make(map[string]nodeInfo, len(res.Items))
	for _, n := range res.Items {
		out[n.ID] = nodeInfo{addr: n.Status.Addr, host: n.Description.Hostname, down: n.Status.State == swarm.NodeStateDown,
			drained: n.Spec.Availability == swarm.NodeAvailabilityDrain}
	}
	return out, nil
}

// fromService makes a Container of a service and its tasks.
func fromService(svc swarm.Service, tasks []swarm.Task, nodes map[string]nodeInfo) observed {
	o := observed{Container: backend.Container{
		ID: svc.ID, Name: svc.Spec.Name, Labels: map[string]string{}, Created: svc.CreatedAt, State: backend.Created,
	}}
	for k, v := range svc.Spec.Labels {
		if k != portLabel {
			o.Labels[k] = v
		}
	}
	o.Port, _ = strconv.Atoi(svc.Spec.Labels[portLabel])
	if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
		o.Image = cs.Image
		if _, d, ok := strings.Cut(cs.Image, "@"); ok {
			o.ImageID = d
		}
	}
	if len(tasks) == 0 {
		return o // a service whose task is not made yet (or replicas 0)
	}
	t := slices.MaxFunc(tasks, func(a, b swarm.Task) int { return a.CreatedAt.Compare(b.CreatedAt) })
	st := t.Status
	node := nodes[t.NodeID]
	o.taskState, o.node = st.State, node
	o.Error = st.Err
	if st.ContainerStatus != nil {
		o.ExitCode = st.ContainerStatus.ExitCode
		o.taskRan = st.ContainerStatus.ContainerID != ""
	}
	for _, na := range t.NetworksAttachments {
		if len(na.Addresses) > 0 && na.Network.Spec.Name != "ingress" {
			o.IP = na.Addresses[0].Addr().String()
			break
		}
	}
	if fixed := specPort(svc, o.Port); fixed != 0 && st.State == swarm.TaskStateRunning {
		o.HostPort, o.HostIP = fixed, node.addr // one port on both IPv4 and IPv6 (ports.go)
	} else {
		// A service of an older spawnd, published on a port its node chose:
		// the first entry is IPv4's (moby lists 0.0.0.0's binding first).
		for _, p := range st.PortStatus.Ports {
			if int(p.TargetPort) == o.Port && p.PublishedPort != 0 {
				o.HostPort, o.HostIP = int(p.PublishedPort), node.addr
				break
			}
		}
	}
	switch st.State {
	case swarm.TaskStateRunning:
		o.State, o.StartedAt = backend.Running, st.Timestamp
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateShutdown, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
		o.State, o.FinishedAt = backend.Exited, st.Timestamp
		if st.State == swarm.TaskStateRejected && o.ExitCode == 0 {
			o.ExitCode = 128 // it never ran: not a clean exit
		}
	case swarm.TaskStatePending, swarm.TaskStateNew, swarm.TaskStateAllocated:
		o.pending = true
		if st.Err == "" && st.Message != "" && st.Message != "pending task scheduling" {
			o.Error = st.Message
		}
	}
	if o.State == backend.Exited && o.Error == "" && node.drained {
		// Draining shuts the task down; with restart none nothing replaces it.
		o.Error = fmt.Sprintf("node %s (%s) was drained", node.host, node.addr)
	}
	if len(tasks) > 1 && o.State != backend.Exited {
		// Swarm replaced the task spawnd started (it never should, with
		// restart none): the server the hub knew is gone.
		o.State, o.FinishedAt = backend.Exited, time.Time{}
		o.Error = "the swarm replaced the server's task on another node"
	}
	if t.DesiredState != swarm.TaskStateRunning && o.State == backend.Running {
		o.State = backend.Removing // being shut down
	}
	if node.down && (o.State == backend.Running || o.State == backend.Created || o.State == backend.Removing) {
		// The node is gone; so is the server on it.
		o.State, o.ExitCode, o.FinishedAt = backend.Exited, 137, time.Time{}
		o.Error = fmt.Sprintf("node %s (%s) is down", node.host, node.addr)
	}
	return o
}

// specPort is the host port svc's spec publishes target on, 0 if none.
func specPort(svc swarm.Service, target int) int {
	if svc.Spec.EndpointSpec == nil {
		return 0
	}
	for _, p := range svc.Spec.EndpointSpec.Ports {
		if int(p.TargetPort) == target && p.PublishMode == swarm.PortConfigPublishModeHost {
			return int(p.PublishedPort)
		}
	}
	return 0
}

// List implements backend.Runtime: every service with all labels, each
// complete (a task says everything an inspect would).
func (s *Swarm) List(ctx context.Context, labels map[string]string) ([]backend.Container, error) {
	os, err := s.list(ctx, labels)
	if err != nil {
		return nil, err
	}
	out := make([]backend.Container, len(os))
	for i, o := range os {
		out[i] = o.Container
	}
	return out, nil
}

func (s *Swarm) list(ctx context.Context, labels map[string]string) ([]observed, error) {
	f := client.Filters{}
	for k, v := range labels {
		f.Add("label", k+"="+v)
	}
	svcs, err := s.cli.ServiceList(ctx, client.ServiceListOptions{Filters: f})
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	if len(svcs.Items) == 0 {
		return nil, nil
	}
	tf := client.Filters{}
	for _, svc := range svcs.Items {
		tf.Add("service", svc.ID)
	}
	tasks, err := s.cli.TaskList(ctx, client.TaskListOptions{Filters: tf})
	if err != nil {
		return nil, fmt.Errorf("listing tasks: %w", err)
	}
	byService := map[string][]swarm.Task{}
	for _, t := range tasks.Items {
		byService[t.ServiceID] = append(byService[t.ServiceID], t)
	}
	nodes, err := s.nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]observed, 0, len(svcs.Items))
	for _, svc := range svcs.Items {
		out = append(out, fromService(svc, byService[svc.ID], nodes))
	}
	return out, nil
}

// Events implements backend.Runtime. Swarm reports no task events, so the
// manager is asked every PollInterval and changes become events: create,
// start (running), die (ended, or its node went down), destroy (gone).
func (s *Swarm) Events(ctx context.Context, labels map[string]string) (<-chan backend.ContainerEvent, <-chan error) {
	out := make(chan backend.ContainerEvent, 64)
	errc := make(chan error, 1)
	poll := func() (map[string]backend.Container, error) {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		cs, err := s.List(lctx, labels)
		now := make(map[string]backend.Container, len(cs))
		for _, c := range cs {
			now[c.ID] = c
		}
		return now, err
	}
	// The first listing is taken before Events returns: whatever happens
	// after the call is an event, as with an engine's subscription.
	last, err := poll()
	if err != nil {
		errc <- err
		close(out)
		return out, errc
	}
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(s.opt.PollInterval):
			}
			now, err := poll()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				errc <- err
				return
			}
			for _, ev := range diff(last, now) {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
			last = now
		}
	}()
	return out, errc
}

// diff is the events between two pollings.
func diff(last, now map[string]backend.Container) []backend.ContainerEvent {
	var evs []backend.ContainerEvent
	for id, c := range now {
		was, ok := last[id]
		if !ok {
			evs = append(evs, backend.ContainerEvent{ID: id, Action: "create", Labels: c.Labels})
		}
		if c.State != was.State || c.StartedAt != was.StartedAt {
			switch c.State {
			case backend.Running:
				evs = append(evs, backend.ContainerEvent{ID: id, Action: "start", Labels: c.Labels})
			case backend.Exited:
				evs = append(evs, backend.ContainerEvent{ID: id, Action: "die", Labels: c.Labels})
			}
		}
	}
	for id, c := range last {
		if _, ok := now[id]; !ok {
			evs = append(evs, backend.ContainerEvent{ID: id, Action: "destroy", Labels: c.Labels})
		}
	}
	return evs
}
