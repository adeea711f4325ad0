package swarm

import (
	"context"
	"fmt"
	"sync"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// PortRange is the host ports servers are published on, First..Last.
type PortRange struct{ First, Last int }

// DefaultPorts is Kubernetes' NodePort range: known to admins and their
// firewalls, and below Linux's ephemeral range (32768–60999), so a node's
// own outgoing connections never hold a server's port.
var DefaultPorts = PortRange{First: 30000, Last: 32767}

// Validate says what is wrong with r, if anything.
func (r PortRange) Validate() error {
	if r.First < 1024 || r.Last > 65535 || r.First > r.Last {
		return fmt.Errorf("%d-%d is not a range of unprivileged ports (1024-65535, first <= last)", r.First, r.Last)
	}
	return nil
}

// String is r as the config writes it.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// ports hands each new server a host port no service of the swarm has.
//
// Why spawnd picks: with published port 0, each node's dockerd picks one
// port for IPv4 and, separately, one for IPv6, and the two drift apart
// (moby/moby#42442, Docker 20.10). A task's port status does not say which
// is which, so a server could be reported at its IPv6 port — another
// server's IPv4 port on that node. CI saw it: the hub's check for sw15
// reached sw14's server, and sw14 was never reachable at its address. A
// fixed port is one number on both families, and Swarm's scheduler keeps
// two tasks that publish one host port off the same node.
type ports struct {
	mu   sync.Mutex
	r    PortRange
	next int // where the search starts: recently freed ports are taken last
}

// take returns a free port and holds the allocator until release is
// called, after the service that uses it is created (or was not), so two
// starts never take one port.
func (p *ports) take(ctx context.Context, cli *client.Client) (port int, release func(), err error) {
	p.mu.Lock()
	used, err := publishedPorts(ctx, cli)
	if err != nil {
		p.mu.Unlock()
		return 0, nil, err
	}
	port, err = p.pick(used)
	if err != nil {
		p.mu.Unlock()
		return 0, nil, err
	}
	return port, p.mu.Unlock, nil
}

// pick is the first port from next on, round the range, that used lacks.
func (p *ports) pick(used map[int]bool) (int, error) {
	n := p.r.Last - p.r.First + 1
	if p.next < p.r.First || p.next > p.r.Last {
		p.next = p.r.First
	}
	for i := range n {
		port := p.r.First + (p.next-p.r.First+i)%n
		if !used[port] {
			p.next = port + 1
			return port, nil
		}
	}
	return 0, fmt.Errorf("all %d ports of engine.ports %s are published by services; widen the range", n, p.r)
}

// publishedPorts are the host ports every service of the swarm publishes,
// in either mode (an ingress port is taken on every node).
func publishedPorts(ctx context.Context, cli *client.Client) (map[int]bool, error) {
	svcs, err := cli.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing services for their ports: %w", err)
	}
	used := map[int]bool{}
	for _, svc := range svcs.Items {
		var lists [][]swarm.PortConfig
		if svc.Spec.EndpointSpec != nil {
			lists = append(lists, svc.Spec.EndpointSpec.Ports)
		}
		lists = append(lists, svc.Endpoint.Ports)
		for _, l := range lists {
			for _, pc := range l {
				if pc.PublishedPort != 0 {
					used[int(pc.PublishedPort)] = true
				}
			}
		}
	}
	return used, nil
}
