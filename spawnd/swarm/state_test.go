package swarm

import (
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// TestFromService: how a service and its tasks read as a container, for
// each task state and node condition the backend meets.
func TestFromService(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	svc := swarm.Service{ID: "svc1", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "spawnd-x-ada",
		Labels: map[string]string{"io.spawnd.user": "ada", portLabel: "8888"}}}}
	task := func(state swarm.TaskState, node string, at time.Time, code int, errText string) swarm.Task {
		tk := swarm.Task{NodeID: node, DesiredState: swarm.TaskStateRunning,
			Status: swarm.TaskStatus{State: state, Timestamp: at, Err: errText, ContainerStatus: &swarm.ContainerStatus{ContainerID: "c1", ExitCode: code},
				PortStatus: swarm.PortStatus{Ports: []swarm.PortConfig{{TargetPort: 8888, PublishedPort: 30001}, {TargetPort: 8888, PublishedPort: 30001}}}}}
		tk.CreatedAt = at
		return tk
	}
	nodes := map[string]nodeInfo{
		"up":      {addr: "10.0.0.1", host: "n1"},
		"down":    {addr: "10.0.0.2", host: "n2", down: true},
		"drained": {addr: "10.0.0.3", host: "n3", drained: true},
	}
	for _, tc := range []struct {
		name      string
		tasks     []swarm.Task
		state     backend.State
		code      int
		errHas    string
		pending   bool
		hostIP    string
		startedAt time.Time
	}{
		{name: "no task yet", state: backend.Created},
		{name: "pending", tasks: []swarm.Task{task(swarm.TaskStatePending, "", t0, 0, "no suitable node (insufficient resources on 3 nodes)")},
			state: backend.Created, pending: true, errHas: "insufficient resources"},
		{name: "preparing", tasks: []swarm.Task{task(swarm.TaskStatePreparing, "up", t0, 0, "")}, state: backend.Created},
		{name: "running", tasks: []swarm.Task{task(swarm.TaskStateRunning, "up", t0, 0, "")}, state: backend.Running, hostIP: "10.0.0.1", startedAt: t0},
		{name: "failed", tasks: []swarm.Task{task(swarm.TaskStateFailed, "up", t0, 3, "task: non-zero exit (3)")}, state: backend.Exited, code: 3, errHas: "non-zero exit"},
		{name: "rejected", tasks: []swarm.Task{task(swarm.TaskStateRejected, "up", t0, 0, "No such image")}, state: backend.Exited, code: 128, errHas: "No such image"},
		{name: "node down", tasks: []swarm.Task{task(swarm.TaskStateRunning, "down", t0, 0, "")}, state: backend.Exited, code: 137, errHas: "node n2 (10.0.0.2) is down", startedAt: t0},
		{name: "node drained", tasks: []swarm.Task{task(swarm.TaskStateShutdown, "drained", t0, 0, "")}, state: backend.Exited, errHas: "was drained"},
		{name: "replaced", tasks: []swarm.Task{task(swarm.TaskStateShutdown, "up", t0, 0, ""), task(swarm.TaskStateRunning, "up", t0.Add(time.Minute), 0, "")},
			state: backend.Exited, errHas: "replaced", startedAt: t0.Add(time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := fromService(svc, tc.tasks, nodes)
			if o.ID != "svc1" || o.Name != "spawnd-x-ada" || o.Port != 8888 || o.Labels["io.spawnd.user"] != "ada" {
				t.Fatalf("identity: %+v", o.Container)
			}
			if _, ok := o.Labels[portLabel]; ok {
				t.Errorf("the port label leaks into the labels")
			}
			if o.State != tc.state || o.ExitCode != tc.code || o.pending != tc.pending || !o.StartedAt.Equal(tc.startedAt) {
				t.Errorf("state %s code %d pending %v started %v; want %s %d %v %v", o.State, o.ExitCode, o.pending, o.StartedAt, tc.state, tc.code, tc.pending, tc.startedAt)
			}
			if !strings.Contains(o.Error, tc.errHas) {
				t.Errorf("error %q; want it to contain %q", o.Error, tc.errHas)
			}
			if tc.hostIP != "" && (o.HostIP != tc.hostIP || o.HostPort != 30001) {
				t.Errorf("published at %s:%d; want %s:30001", o.HostIP, o.HostPort, tc.hostIP)
			}
		})
	}
}

// TestDiff: two listings become the core's events.
func TestDiff(t *testing.T) {
	run := backend.Container{ID: "a", State: backend.Running, StartedAt: time.Unix(1, 0)}
	for _, tc := range []struct {
		name      string
		last, now []backend.Container
		want      []string
	}{
		{name: "nothing changed", last: []backend.Container{run}, now: []backend.Container{run}},
		{name: "made and running", now: []backend.Container{run}, want: []string{"a create", "a start"}},
		{name: "made, pending", now: []backend.Container{{ID: "a", State: backend.Created}}, want: []string{"a create"}},
		{name: "ended", last: []backend.Container{run}, now: []backend.Container{{ID: "a", State: backend.Exited, StartedAt: run.StartedAt}}, want: []string{"a die"}},
		{name: "gone", last: []backend.Container{run}, want: []string{"a destroy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := func(cs []backend.Container) map[string]backend.Container {
				out := map[string]backend.Container{}
				for _, c := range cs {
					out[c.ID] = c
				}
				return out
			}
			var got []string
			for _, ev := range diff(m(tc.last), m(tc.now)) {
				got = append(got, ev.ID+" "+ev.Action)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("events %v; want %v", got, tc.want)
			}
		})
	}
}
