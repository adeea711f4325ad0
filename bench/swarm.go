package main

import (
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/daemon"
	"github.com/spawnd/spawnd/internal/testenv"
	spawndswarm "github.com/spawnd/spawnd/spawnd/swarm"
)

// benchTB stands a test harness up outside go test: a fatal error runs
// the cleanups (the swarm is taken down) and then exits.
type benchTB struct{ cleanups []func() }

func (t *benchTB) Helper()          {}
func (t *benchTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *benchTB) Fatal(args ...any) {
	t.cleanup()
	log.Fatal(args...)
}
func (t *benchTB) Fatalf(format string, args ...any) {
	t.cleanup()
	log.Fatalf(format, args...)
}
func (t *benchTB) cleanup() {
	for _, f := range slices.Backward(t.cleanups) {
		f()
	}
	t.cleanups = nil
}

// swarmFigures: a start on a real three-node swarm (testenv.NewSwarm, as
// the tests make it) until the server answers HTTP on its node, against
// the raw floor on the same swarm (a service made with the Engine API,
// waited for until it answers on its node's published port), and a start
// on the single engine, all three interleaved in one run. The image is on
// every node first (spawnd image prepull): pulls are not measured.
func (b *bench) swarmFigures() {
	tb := &benchTB{}
	defer tb.cleanup()
	sw := testenv.NewSwarm(tb, 3, 46)
	sw.Push(tb, b.eng, b.image, b.image)
	mgr := testenv.Client(sw.Manager(tb))
	off := false
	onSwarm := b.newWorld(func(c *daemon.Config) {
		c.Engine = daemon.EngineConfig{Backend: "swarm", Host: sw.Nodes[0].Host, Registry: sw.Registry, InsecureRegistry: true}
		c.Network.ICC = true
		c.Network.Egress.Enabled = &off
	})
	defer func() { onSwarm.cancel(); <-onSwarm.done }()
	single := b.newWorld(nil)
	defer b.closeWorld(single)
	sb, err := spawndswarm.New(spawndswarm.Options{Host: sw.Nodes[0].Host, Registry: sw.Registry, Insecure: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer sb.Close()
	pinned, err := sb.Prepull(b.ctx, b.image, map[string]string{"io.spawnd.bench": "1"}, nil)
	if err != nil {
		tb.Fatal(err)
	}

	start := func(w *world, user string) time.Duration {
		began := time.Now()
		s, err := w.client.Start(b.ctx, user, "", api.StartRequest{})
		if err != nil {
			tb.Fatalf("start %s: %v", user, err)
		}
		waitHTTP(s.Host, s.Port)
		took := time.Since(began)
		_, _ = w.client.Stop(b.ctx, user, "")
		return took
	}
	spec := b.rawServiceSpec(pinned, onSwarm)
	raw := func(i int) time.Duration {
		s := spec
		s.Annotations.Name = fmt.Sprintf("spawnd-bench-raw-%d", i)
		began := time.Now()
		res, err := mgr.ServiceCreate(b.ctx, client.ServiceCreateOptions{Spec: s})
		if err != nil {
			tb.Fatal(err)
		}
		f := client.Filters{}
		f.Add("service", res.ID)
		for {
			tasks, err := mgr.TaskList(b.ctx, client.TaskListOptions{Filters: f})
			if err != nil {
				tb.Fatal(err)
			}
			if len(tasks.Items) == 1 && tasks.Items[0].Status.State == swarm.TaskStateRunning && len(tasks.Items[0].Status.PortStatus.Ports) > 0 { // listed once per address family
				node, err := mgr.NodeInspect(b.ctx, tasks.Items[0].NodeID, client.NodeInspectOptions{})
				if err != nil {
					tb.Fatal(err)
				}
				waitHTTP(node.Node.Status.Addr, int(tasks.Items[0].Status.PortStatus.Ports[0].PublishedPort))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(began)
		_, _ = mgr.ServiceRemove(b.ctx, res.ID, client.ServiceRemoveOptions{})
		return took
	}
	var sp, rw, one []time.Duration
	for i := range b.rounds {
		runs := []func(){
			func() { sp = append(sp, start(onSwarm, fmt.Sprintf("sw%d", i))) },
			func() { rw = append(rw, raw(i)) },
			func() { one = append(one, start(single, fmt.Sprintf("one%d", i))) },
		}
		for k := range runs {
			runs[(i+k)%len(runs)]() // each goes first, second and third in turn
		}
	}
	sm, s95 := stats(sp)
	rm, r95 := stats(rw)
	om, o95 := stats(one)
	r := ratio(sm, rm)
	b.add(row{figure: fmt.Sprintf("swarm: API start → HTTP on its node (median, %s; n=%d each, interleaved)", tailName(b.rounds), b.rounds),
		spawnd: ms(sm) + ", " + ms(s95), raw: ms(rm) + ", " + ms(r95) + " (raw service)",
		ratio: fmt.Sprintf("%.2f×", r), target: "≤ 1.25×", pass: r <= 1.25})
	b.add(row{figure: fmt.Sprintf("swarm vs one engine: spawnd start → HTTP (median, %s; n=%d each, same run)", tailName(b.rounds), b.rounds),
		spawnd: ms(sm) + ", " + ms(s95) + " (swarm)", raw: ms(om) + ", " + ms(o95) + " (one engine)",
		ratio: fmt.Sprintf("%.2f×", ratio(sm, om)), target: "information", pass: true,
		note: "what a swarm's scheduling and overlay cost per start"})
}

// rawServiceSpec is the service spawnd makes for a server, made by hand:
// the same image by digest, limits and reservation, hardening, overlay and
// host-mode port, with a home bind-mounted.
func (b *bench) rawServiceSpec(image string, w *world) swarm.ServiceSpec {
	one := uint64(1)
	init := true
	home := b.rawSpec(w, "swarm-raw").Mounts[0].Source
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Labels: map[string]string{"io.spawnd.bench": "1"}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, User: "1000:100", Init: &init, CapabilityDrop: []string{"ALL"},
				Mounts: []mount.Mount{{Type: mount.TypeBind, Source: home, Target: "/home/jovyan"}}},
			Resources: &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: 256 << 20, NanoCPUs: 1e9, Pids: 128},
				Reservations: &swarm.Resources{MemoryBytes: 256 << 20}},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: w.cfg.Network.Name}},
		},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR,
			Ports: []swarm.PortConfig{{Protocol: network.TCP, TargetPort: 8888, PublishMode: swarm.PortConfigPublishModeHost}}},
	}
}
