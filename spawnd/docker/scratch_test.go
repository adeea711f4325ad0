package docker_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spawnd/spawnd/internal/ci"
	"github.com/spawnd/spawnd/spawnd/docker"
)

// TestScratchLeavesTheMachineAlone: a scratch engine answers, has an empty
// image store, and neither its start nor its end changes the machine's
// network links (a dockerd with --bridge=none deletes "docker0" at start:
// in the machine's namespace that was the machine's engine's bridge). Its
// directory is gone afterwards.
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
			if !strings.HasPrefix(i.Name, "veth") { // other tests' containers come and go
				names = append(names, i.Name)
			}
		}
		sort.Strings(names)
		return strings.Join(names, " ")
	}
	before := links()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sc, err := docker.StartScratch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dirsBefore, _ := filepath.Glob(filepath.Join(os.TempDir(), "spawnd-dockerd-scratch-*"))
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
	dirsAfter, _ := filepath.Glob(filepath.Join(os.TempDir(), "spawnd-dockerd-scratch-*"))
	if len(dirsAfter) >= len(dirsBefore) {
		t.Errorf("the scratch engine's directory is left: %v (while it ran: %v)", dirsAfter, dirsBefore)
	}
}
