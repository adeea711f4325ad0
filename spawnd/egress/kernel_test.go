package egress_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/testenv"
	"github.com/spawnd/spawnd/spawnd/egress"
)

// TestRulesHoldForBothFamilies routes real traffic, IPv4 and IPv6, through
// the rules Apply writes, in network namespaces of the test's own (no
// engine, no outside address): a "server" namespace sits on a bridge in a
// "router" namespace, as a container sits on the user network's bridge on
// the host, and a "far side" namespace holds stand-ins for the metadata
// services (169.254.169.254, fd00:ec2::254) and for the internet
// (198.51.100.10, 2001:db8:1::10, documentation ranges). Before the rules
// all four answer (so "refused" below is the fence, not a broken probe);
// with the rules only the internet stand-ins do, over both families; with
// the table removed all four answer again.
func TestRulesHoldForBothFamilies(t *testing.T) {
	router, server, far := testenv.NewNetns(t), testenv.NewNetns(t), testenv.NewNetns(t)
	id := router[len(router)-6:]
	bridge, srvIf, farIf := "sptb"+id, "spts"+id, "sptf"+id
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	ip("-n", router, "link", "add", bridge, "type", "bridge")
	ip("-n", router, "link", "set", bridge, "up")
	ip("-n", router, "addr", "add", "10.99.0.1/24", "dev", bridge)
	ip("-n", router, "addr", "add", "fd99::1/64", "dev", bridge, "nodad")
	ip("-n", router, "link", "add", srvIf, "type", "veth", "peer", "name", "eth0", "netns", server)
	ip("-n", router, "link", "set", srvIf, "master", bridge, "up")
	ip("-n", server, "link", "set", "eth0", "up")
	ip("-n", server, "addr", "add", "10.99.0.2/24", "dev", "eth0")
	ip("-n", server, "addr", "add", "fd99::2/64", "dev", "eth0", "nodad")
	ip("-n", server, "route", "add", "default", "via", "10.99.0.1")
	ip("-n", server, "-6", "route", "add", "default", "via", "fd99::1")
	ip("-n", router, "link", "add", farIf, "type", "veth", "peer", "name", "eth0", "netns", far)
	ip("-n", router, "link", "set", farIf, "up")
	ip("-n", far, "link", "set", "eth0", "up")
	for _, a := range [][2]string{{"169.254.169.1/24", "169.254.169.254/24"}, {"198.51.100.1/24", "198.51.100.10/24"},
		{"fd00:ec2::1/64", "fd00:ec2::254/64"}, {"2001:db8:1::1/64", "2001:db8:1::10/64"}} {
		ip("-n", router, "addr", "add", a[0], "dev", farIf, "nodad")
		ip("-n", far, "addr", "add", a[1], "dev", "eth0", "nodad")
	}
	ip("-n", far, "route", "add", "default", "via", "198.51.100.1")
	ip("-n", far, "-6", "route", "add", "default", "via", "2001:db8:1::1")
	for _, k := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"} {
		if out, err := exec.Command("ip", "netns", "exec", router, "sysctl", "-qw", k).CombinedOutput(); err != nil {
			t.Fatalf("sysctl %s in %s: %v %s", k, router, err, out)
		}
	}

	// One listener on the far side answers every address (dual stack).
	var ln net.Listener
	if err := testenv.InNetns(far, func() (err error) { ln, err = net.Listen("tcp", "[::]:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	targets := map[string]bool{"169.254.169.254": false, "fd00:ec2::254": false, "198.51.100.10": true, "2001:db8:1::10": true}
	reach := func(addr string) bool {
		var got bool
		_ = testenv.InNetns(server, func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "8080"), 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			b := make([]byte, 6)
			n, _ := io.ReadFull(c, b)
			got = n == 6 && string(b) == "hello\n"
			return nil
		})
		return got
	}
	check := func(phase string, want func(addr string) bool) {
		t.Helper()
		for addr := range targets {
			if got := reach(addr); got != want(addr) {
				t.Errorf("%s: %s reachable=%v, want %v", phase, addr, got, want(addr))
			}
		}
	}
	check("before the rules", func(string) bool { return true })
	if t.Failed() {
		t.Fatal("the stand-ins must answer before the rules, or 'refused' below proves nothing")
	}

	b := make([]byte, 5)
	_, _ = rand.Read(b)
	f := egress.New("t" + hex.EncodeToString(b))
	ctx := context.Background()
	if err := testenv.InNetns(router, func() error { return f.Apply(ctx, egress.Rules{Bridge: bridge, Block: egress.MetadataCIDRs}) }); err != nil {
		t.Fatal(err)
	}
	check("with the rules", func(addr string) bool { return targets[addr] })
	if err := testenv.InNetns(router, func() error { return f.Remove(ctx) }); err != nil {
		t.Fatal(err)
	}
	check("the table removed", func(string) bool { return true })
}
