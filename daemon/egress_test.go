package daemon_test

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// TestEgressFence: user containers reach a stand-in "metadata service" and a
// host service before the daemon's egress rules, and not after; the
// stand-in "internet" and the hub's API port stay reachable throughout;
// turning the rules off removes the daemon's table. Every address is the
// test's own: network namespaces on 198.18.0.0/15 and listeners on the
// user network's gateway.
func TestEgressFence(t *testing.T) {
	eng := testenv.Engine(t)
	var r [1]byte
	_, _ = rand.Read(r[:])
	// 198.18.0-127.x: this test's half (e2e's compose test takes 128-255).
	metadata := testenv.NewStandIn(t, r[0]&0x7f, 0) // blocked by network.egress.block
	internet := testenv.NewStandIn(t, r[0]&0x7f, 1) // not listed: stays reachable
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := testConfig(t, eng)
	off := false
	cfg.Network.Egress.Enabled = &off
	h := startDaemon(t, eng, cfg)
	opts, err := h.client.Options(ctx)
	if err != nil {
		t.Fatal(err)
	}
	listen := func() (net.Listener, int) {
		ln, err := net.Listen("tcp", net.JoinHostPort(opts.Network.Gateway, "0"))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		return ln, ln.Addr().(*net.TCPAddr).Port
	}
	hubAPI, hubPort := listen()
	private, _ := listen()
	s, err := h.client.Start(ctx, "probe", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{
		"metadata":     net.JoinHostPort(metadata.Addr.String(), "80"),
		"internet":     net.JoinHostPort(internet.Addr.String(), "80"),
		"hub API":      hubAPI.Addr().String(),
		"host service": private.Addr().String(),
	}
	check := func(phase, id string, want map[string]bool) {
		t.Helper()
		for name, addr := range targets {
			if got := testenv.Reachable(ctx, t, eng, id, addr); got != want[name] {
				t.Errorf("%s: %s (%s) reachable=%v, want %v", phase, name, addr, got, want[name])
			}
		}
	}
	check("before the rules", s.ContainerID, map[string]bool{"metadata": true, "internet": true, "hub API": true, "host service": true})
	if t.Failed() {
		t.Fatal("the stand-ins must be reachable before the rules, or 'blocked' below proves nothing")
	}

	// The rules on: the running server is fenced at once (adopted), and so is a new one.
	h.stop()
	cfg.Network.Egress.Enabled = nil
	cfg.Network.Egress.Block = []string{metadata.Net.String()}
	cfg.Network.Egress.HostPorts = []int{hubPort}
	h = startDaemon(t, eng, cfg)
	fenced := map[string]bool{"metadata": false, "internet": true, "hub API": true, "host service": false}
	check("with the rules", s.ContainerID, fenced)
	s2, err := h.client.Start(ctx, "probe2", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	check("a server started under the rules", s2.ContainerID, fenced)
	// What the kernel holds, read back through the library the daemon
	// writes it with (no nft binary): the built-in metadata ranges, IPv6
	// included, the admin's CIDR, and the hub's port as the host's only open
	// one.
	table := egress.Table(cfg.Instance)
	held, found, err := egress.Read(ctx, table)
	if err != nil || !found {
		t.Fatalf("reading inet %s from the kernel: found %v, %v", table, found, err)
	}
	for _, p := range append(slices.Clone(egress.MetadataCIDRs), metadata.Net) {
		if !slices.Contains(held.Block, p) {
			t.Errorf("the kernel's table does not block %s: %+v", p, held)
		}
	}
	if !slices.Equal(held.HostPorts, []uint16{uint16(hubPort)}) || held.Bridge == "" {
		t.Errorf("the kernel's table lets through host ports %v on bridge %q; want [%d] on the user network's bridge", held.HostPorts, held.Bridge, hubPort)
	}
	t.Logf("the kernel's rules: %+v", held)

	// A daemon restart keeps the fence (it outlives the daemon on purpose).
	h.stop()
	check("the daemon stopped", s.ContainerID, fenced)

	// Off again: the daemon removes its table; the stand-in answers again.
	off = false
	cfg.Network.Egress.Enabled = &off
	h = startDaemon(t, eng, cfg)
	if names, _ := egress.Tables(table); len(names) != 0 {
		t.Fatalf("egress off, and the table is still there: %v", names)
	}
	check("the rules off", s.ContainerID, map[string]bool{"metadata": true, "internet": true, "hub API": true, "host service": true})
}
