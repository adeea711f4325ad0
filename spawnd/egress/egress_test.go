package egress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/spawnd/spawnd/internal/ci"
)

// TestApplyThenReadTheKernel writes an instance's table through netlink
// and reads it back from the kernel through the same library (no nft
// binary): the built-in metadata ranges, IPv6 included, an admin's CIDRs of
// both families and the host ports are what the kernel holds; a second
// Apply replaces them; Remove leaves no table. Needs root (CAP_NET_ADMIN);
// no engine.
func TestApplyThenReadTheKernel(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "nftables needs root (CAP_NET_ADMIN)")
	}
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	instance := "t" + hex.EncodeToString(b) // a test instance: scripts/sweep removes it after a kill
	ctx := context.Background()
	f := New(instance)
	t.Cleanup(func() { _ = f.Remove(context.Background()) })
	want := Rules{
		Bridge:    "br-spawndtest",
		Block:     append(slices.Clone(MetadataCIDRs), netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("2001:db8:42::/48")),
		HostPorts: []uint16{8081, 9100},
	}
	if err := f.Apply(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, found, err := Read(ctx, Table(instance))
	if err != nil || !found {
		t.Fatalf("Read: found %v, %v", found, err)
	}
	if !got.equal(want) {
		t.Fatalf("the kernel holds %+v; want %+v", got, want)
	}
	for _, p := range []string{"169.254.0.0/16", "100.100.100.200/32", "fd00:ec2::254/128"} {
		if !slices.Contains(got.Block, netip.MustParsePrefix(p)) {
			t.Errorf("the kernel's table does not block the metadata range %s", p)
		}
	}

	next := Rules{Bridge: "br-spawndtest2", Block: MetadataCIDRs}
	if err := f.Apply(ctx, next); err != nil {
		t.Fatal(err)
	}
	if got, _, err := Read(ctx, Table(instance)); err != nil || !got.equal(next) {
		t.Fatalf("after the second Apply the kernel holds %+v (%v); want %+v", got, err, next)
	}
	if err := f.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, found, err := Read(ctx, Table(instance)); err != nil || found {
		t.Fatalf("after Remove: found %v, %v", found, err)
	}
}
