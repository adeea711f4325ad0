package docker_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestScratchLeavesTheMachineAlone: a scratch engine answers, has an empty
// image store, and neither its start nor its end removes a network link of
// the machine (a dockerd with --bridge=none deletes "docker0" at start: in
// the machine's namespace that was the machine's engine's bridge) or adds
// one. Its directory is gone afterwards.
//
// Other packages' tests run beside this one and create and remove
// user-defined networks ("br-*") and container ends ("veth*"), so those
// are left out of the comparison; docker0 must be there throughout.
func TestScratchLeavesTheMachineAlone(t *testing.T) {
	if os.Getuid() != 0 {
		ci.Skip(t, "a scratch engine needs root")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		ci.Skip(t, "no dockerd")
	}
	links := func() string {
		ifs, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, i := range ifs {
			if !strings.HasPrefix(i.Name, "veth") && !strings.HasPrefix(i.Name, "br-") {
				names = append(names, i.Name)
			}
		}
		sort.Strings(names)
		return strings.Join(names, " ")
	}
	before := links()
	if !strings.Contains(" "+before+" ", " docker0 ") {
		t.Fatalf("the machine has no docker0 to begin with (links: %s); is the engine up (scripts/engine-up)?", before)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sc, err := docker.StartScratch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := sc.Dir()
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the running scratch engine's directory: %v", err)
	}
	if err := sc.CheckImage(ctx, "spawnd/debian:bookworm"); err == nil {
		t.Error("a scratch engine has an image it was never given")
	}
	during := links()
	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	after := links()
	if during != before || after != before {
		t.Fatalf("the machine's links changed:\nbefore %s\nduring %s\nafter  %s", before, during, after)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the scratch engine's directory %s is left after Close (stat: %v)", dir, err)
	}
}
