package swarm

import (
	"cmp"
	"fmt"
	"maps"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"

	"github.com/spawnd/spawnd/spawnd/backend"
)

// serviceSpec is the service of one server: one replica, never restarted,
// the hardening of one host (capabilities dropped, no new privileges, an
// init, the pids limit), memory reserved as well as limited so the
// scheduler places by it, the single-user port published in host mode on
// hostPort (0: not published).
func (s *Swarm) serviceSpec(c backend.ContainerSpec, image string, hostPort int) swarm.ServiceSpec {
	one := uint64(1)
	init := true
	grace := s.opt.StopGrace
	cs := &swarm.ContainerSpec{
		Image: image, Labels: c.Labels, Env: c.Env, Args: c.Cmd, User: c.User, Dir: c.WorkingDir,
		Init: &init, StopGracePeriod: &grace, CapabilityDrop: []string{"ALL"},
		Privileges: &swarm.Privileges{NoNewPrivileges: true},
	}
	for _, m := range c.Mounts {
		cs.Mounts = append(cs.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	if c.ShmSize > 0 {
		cs.Mounts = append(cs.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: "/dev/shm",
			TmpfsOptions: &mount.TmpfsOptions{SizeBytes: c.ShmSize, Mode: 0o1777}})
	}
	res := &swarm.ResourceRequirements{Limits: &swarm.Limit{MemoryBytes: c.Memory, NanoCPUs: c.NanoCPUs, Pids: c.PidsLimit}}
	// The scheduler places by reservations: the profile's, else the limit.
	if mem := cmp.Or(c.MemoryReservation, c.Memory); mem > 0 || c.CPUReservation > 0 {
		res.Reservations = &swarm.Resources{MemoryBytes: mem, NanoCPUs: c.CPUReservation}
	}
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: c.Name, Labels: c.Labels},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: cs,
			Resources:     res,
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionNone},
			Placement:     &swarm.Placement{Constraints: c.Placement},
			LogDriver:     &swarm.Driver{Name: "json-file", Options: map[string]string{"max-size": "10m", "max-file": "2"}},
		},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		EndpointSpec: &swarm.EndpointSpec{Mode: swarm.ResolutionModeDNSRR},
	}
	if c.Network != "" {
		spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: c.Network}}
	}
	if hostPort != 0 {
		spec.EndpointSpec.Ports = []swarm.PortConfig{{Protocol: network.TCP, TargetPort: uint32(c.Port),
			PublishedPort: uint32(hostPort), PublishMode: swarm.PortConfigPublishModeHost}}
	}
	spec.Annotations.Labels = cloneWith(c.Labels, portLabel, strconv.Itoa(c.Port))
	return spec
}

// ErrNoGPUs refuses a server that asks for GPUs. Swarm services cannot
// ask the engine for devices (no device requests in a service), and the
// one way Swarm hands out GPUs, generic resources, fails on Docker 20.10:
// a service reserving one NVIDIA-GPU on a node that advertises it was
// placed, then removed with "assigned node no longer meets constraints"
// (tried on this project's test swarm, with named and with discrete GPUs).
var ErrNoGPUs = fmt.Errorf("GPU profiles are not supported on Swarm (services cannot request devices); "+
	"use placement: [node.labels.gpu==true] with the NVIDIA runtime as those nodes' default: %w", errdefs.ErrInvalidArgument)

// portLabel keeps the single-user port in the service's own record.
const portLabel = "io.spawnd.swarm.port"

// cloneWith is m with k set to v, m itself untouched.
func cloneWith(m map[string]string, k, v string) map[string]string {
	out := maps.Clone(m)
	if out == nil {
		out = map[string]string{}
	}
	out[k] = v
	return out
}
