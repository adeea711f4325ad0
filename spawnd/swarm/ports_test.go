package swarm

import (
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

// TestPortPick: ports are handed out round the range, never one a service
// publishes, and a full range says what to change.
func TestPortPick(t *testing.T) {
	for _, tc := range []struct {
		name    string
		r       PortRange
		next    int
		used    []int
		want    int
		wantErr bool
	}{
		{name: "first", r: PortRange{30000, 30003}, want: 30000},
		{name: "skips used", r: PortRange{30000, 30003}, used: []int{30000, 30001}, want: 30002},
		{name: "goes on from the last", r: PortRange{30000, 30003}, next: 30002, want: 30002},
		{name: "wraps round", r: PortRange{30000, 30003}, next: 30003, used: []int{30003}, want: 30000},
		{name: "full", r: PortRange{30000, 30001}, used: []int{30000, 30001}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &ports{r: tc.r, next: tc.next}
			used := map[int]bool{}
			for _, u := range tc.used {
				used[u] = true
			}
			got, err := p.pick(used)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("pick = %d, %v; want %d (error %v)", got, err, tc.want, tc.wantErr)
			}
			if err == nil && p.next != got+1 {
				t.Errorf("next = %d after %d", p.next, got)
			}
		})
	}
	for _, r := range []PortRange{{80, 90}, {30000, 29999}, {60000, 70000}} {
		if r.Validate() == nil {
			t.Errorf("%s is accepted", r)
		}
	}
}

// TestPortOfDriftedTask: a task whose node bound the server on two ports
// (IPv4's and IPv6's, moby/moby#42442) is reported at the port its
// service fixed; a service without one at the first (IPv4's) entry.
func TestPortOfDriftedTask(t *testing.T) {
	drifted := swarm.Task{NodeID: "n", DesiredState: swarm.TaskStateRunning, Status: swarm.TaskStatus{State: swarm.TaskStateRunning,
		Timestamp: time.Unix(1, 0), ContainerStatus: &swarm.ContainerStatus{ContainerID: "c"},
		PortStatus: swarm.PortStatus{Ports: []swarm.PortConfig{{TargetPort: 8888, PublishedPort: 49153}, {TargetPort: 8888, PublishedPort: 49154}}}}}
	nodes := map[string]nodeInfo{"n": {addr: "10.0.0.1", host: "n1"}}
	svc := func(published uint32) swarm.Service {
		s := swarm.Service{ID: "s", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Labels: map[string]string{portLabel: "8888"}}}}
		if published != 0 {
			s.Spec.EndpointSpec = &swarm.EndpointSpec{Ports: []swarm.PortConfig{{TargetPort: 8888, PublishedPort: published, PublishMode: swarm.PortConfigPublishModeHost}}}
		}
		return s
	}
	for _, tc := range []struct {
		name      string
		published uint32
		want      int
	}{
		{name: "fixed by spawnd", published: 30007, want: 30007},
		{name: "chosen by the node", want: 49153},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := fromService(svc(tc.published), []swarm.Task{drifted}, nodes)
			if o.HostIP != "10.0.0.1" || o.HostPort != tc.want {
				t.Errorf("published at %s:%d; want 10.0.0.1:%d", o.HostIP, o.HostPort, tc.want)
			}
		})
	}
}
