package daemon_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/spawnd/spawnd/api"
	"github.com/spawnd/spawnd/internal/testenv"
)

// cisControl is one control of the CIS Docker Benchmark (v1.6.0), section 5
// ("Container Runtime"), as docs/SECURITY.md lists it.
type cisControl struct {
	id, title string
	// status is what SECURITY.md says: "met", "n/a" or "not met".
	status string
	// check, for "met" and "not met" controls the test can read off the
	// engine, returns nil when the control holds.
	check func(c inspected) error
}

// inspected is what the checks read: the engine's inspect of a running
// server, and the engine's own security options.
type inspected struct {
	ins      client.ContainerInspectResult
	security []string // docker info's SecurityOptions
}

var sensitiveHostDirs = []string{"/", "/boot", "/dev", "/etc", "/lib", "/proc", "/sys", "/usr", "/var/run/docker.sock", "/run/docker.sock"}

var cisSection5 = []cisControl{
	{"5.1", "AppArmor profile enabled", "n/a", nil}, // the check below says whether this host has AppArmor
	{"5.2", "SELinux security options set", "n/a", nil},
	{"5.3", "Linux kernel capabilities restricted", "met", func(c inspected) error {
		if hc := c.ins.Container.HostConfig; !slices.Contains(hc.CapDrop, "ALL") || len(hc.CapAdd) != 0 {
			return fmt.Errorf("CapDrop %v, CapAdd %v; want ALL dropped, none added", hc.CapDrop, hc.CapAdd)
		}
		return nil
	}},
	{"5.4", "privileged containers not used", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.Privileged {
			return fmt.Errorf("privileged")
		}
		return nil
	}},
	{"5.5", "sensitive host system directories not mounted", "met", func(c inspected) error {
		for _, m := range c.ins.Container.Mounts {
			if slices.Contains(sensitiveHostDirs, strings.TrimRight(m.Source, "/")) || m.Source == "/" {
				return fmt.Errorf("mounts %s", m.Source)
			}
		}
		return nil
	}},
	{"5.6", "sshd not run within containers", "met", nil}, // no sshd in any env's command; checked in the process list below
	{"5.7", "privileged ports not mapped", "met", func(c inspected) error {
		for p, bs := range c.ins.Container.NetworkSettings.Ports {
			for _, b := range bs {
				var n int
				fmt.Sscan(b.HostPort, &n)
				if n > 0 && n < 1024 {
					return fmt.Errorf("%v published on host port %d", p, n)
				}
			}
		}
		return nil
	}},
	{"5.8", "only needed ports open", "met", func(c inspected) error {
		if n := len(c.ins.Container.Config.ExposedPorts); n != 1 {
			return fmt.Errorf("%d exposed ports; want the server's one", n)
		}
		return nil
	}},
	{"5.9", "host's network namespace not shared", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.NetworkMode.IsHost() {
			return fmt.Errorf("network mode host")
		}
		return nil
	}},
	{"5.10", "memory usage limited", "met", func(c inspected) error {
		if r := c.ins.Container.HostConfig.Resources; r.Memory <= 0 || r.MemorySwap != r.Memory {
			return fmt.Errorf("memory %d, memory+swap %d; want a limit and no swap beyond it", r.Memory, r.MemorySwap)
		}
		return nil
	}},
	{"5.11", "CPU priority set appropriately", "met", func(c inspected) error {
		if r := c.ins.Container.HostConfig.Resources; r.NanoCPUs <= 0 {
			return fmt.Errorf("no CPU limit (NanoCPUs %d)", r.NanoCPUs)
		}
		return nil
	}},
	{"5.12", "root filesystem mounted read-only", "not met", func(c inspected) error {
		if !c.ins.Container.HostConfig.ReadonlyRootfs {
			return fmt.Errorf("the root filesystem is writable")
		}
		return nil
	}},
	{"5.13", "incoming traffic bound to a specific host interface", "met", func(c inspected) error {
		for p, bs := range c.ins.Container.NetworkSettings.Ports {
			for _, b := range bs {
				if !b.HostIP.IsValid() || b.HostIP.IsUnspecified() {
					return fmt.Errorf("%v published on every address", p)
				}
			}
		}
		return nil
	}},
	{"5.14", "restart policy on-failure at most 5", "met", func(c inspected) error {
		if rp := c.ins.Container.HostConfig.RestartPolicy; !rp.IsNone() && !(rp.IsOnFailure() && rp.MaximumRetryCount <= 5) {
			return fmt.Errorf("restart policy %q", rp.Name)
		}
		return nil
	}},
	{"5.15", "host's process namespace not shared", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.PidMode.IsHost() {
			return fmt.Errorf("pid mode host")
		}
		return nil
	}},
	{"5.16", "host's IPC namespace not shared", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.IpcMode.IsHost() {
			return fmt.Errorf("ipc mode host")
		}
		return nil
	}},
	{"5.17", "host devices not directly exposed", "met", func(c inspected) error {
		if d := c.ins.Container.HostConfig.Devices; len(d) != 0 {
			return fmt.Errorf("devices %v", d)
		}
		return nil
	}},
	{"5.18", "default ulimits overridden only if needed", "met", func(c inspected) error {
		if u := c.ins.Container.HostConfig.Ulimits; len(u) != 0 {
			return fmt.Errorf("ulimits %v", u)
		}
		return nil
	}},
	{"5.19", "mount propagation not shared", "met", func(c inspected) error {
		for _, m := range c.ins.Container.Mounts {
			if p := string(m.Propagation); p == "shared" || p == "rshared" {
				return fmt.Errorf("%s is %s", m.Destination, p)
			}
		}
		return nil
	}},
	{"5.20", "host's UTS namespace not shared", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.UTSMode.IsHost() {
			return fmt.Errorf("uts mode host")
		}
		return nil
	}},
	{"5.21", "default seccomp profile not disabled", "met", func(c inspected) error {
		for _, o := range c.ins.Container.HostConfig.SecurityOpt {
			if strings.HasPrefix(o, "seccomp") && strings.Contains(o, "unconfined") {
				return fmt.Errorf("security option %s", o)
			}
		}
		if !slices.ContainsFunc(c.security, func(s string) bool { return strings.Contains(s, "name=seccomp") }) {
			return fmt.Errorf("the engine has no seccomp (SecurityOptions %v)", c.security)
		}
		return nil
	}},
	{"5.22", "docker exec not used with --privileged", "n/a", nil},
	{"5.23", "docker exec not used with --user=root", "n/a", nil},
	{"5.24", "cgroup usage confirmed", "met", func(c inspected) error {
		if p := c.ins.Container.HostConfig.CgroupParent; p != "" {
			return fmt.Errorf("cgroup parent %q", p)
		}
		return nil
	}},
	{"5.25", "container restricted from acquiring additional privileges", "met", func(c inspected) error {
		if !slices.Contains(c.ins.Container.HostConfig.SecurityOpt, "no-new-privileges:true") {
			return fmt.Errorf("security options %v", c.ins.Container.HostConfig.SecurityOpt)
		}
		return nil
	}},
	{"5.26", "container health checked at runtime", "not met", func(c inspected) error {
		if c.ins.Container.Config.Healthcheck == nil || len(c.ins.Container.Config.Healthcheck.Test) == 0 {
			return fmt.Errorf("no healthcheck")
		}
		return nil
	}},
	{"5.27", "docker commands always use the latest image", "n/a", nil},
	{"5.28", "PIDs cgroup limit used", "met", func(c inspected) error {
		if p := c.ins.Container.HostConfig.PidsLimit; p == nil || *p <= 0 {
			return fmt.Errorf("no pids limit")
		}
		return nil
	}},
	{"5.29", "Docker's default bridge not used", "met", func(c inspected) error {
		if m := c.ins.Container.HostConfig.NetworkMode; m.IsDefault() || m.IsBridge() {
			return fmt.Errorf("network mode %q", m)
		}
		return nil
	}},
	{"5.30", "host's user namespaces not shared", "met", func(c inspected) error {
		if c.ins.Container.HostConfig.UsernsMode.IsHost() {
			return fmt.Errorf("userns mode host")
		}
		return nil
	}},
	{"5.31", "Docker socket not mounted", "met", func(c inspected) error {
		for _, m := range c.ins.Container.Mounts {
			if strings.HasSuffix(m.Source, "docker.sock") || strings.HasSuffix(m.Destination, "docker.sock") {
				return fmt.Errorf("mounts %s", m.Source)
			}
		}
		return nil
	}},
}

// TestCISDockerSection5 inspects a running server on the real engine and
// checks each control of the CIS Docker Benchmark's section 5 that
// docs/SECURITY.md calls met (each must hold) or not met (each must still
// fail, so the table is never stale), and that the table there lists every
// control with the status given here.
func TestCISDockerSection5(t *testing.T) {
	eng := testenv.Engine(t)
	cfg := testConfig(t, eng)
	h := startDaemon(t, eng, cfg)
	ctx := context.Background()
	s, err := h.client.Start(ctx, "cis", "", api.StartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cli := testenv.Client(eng)
	ins, err := cli.ContainerInspect(ctx, s.ContainerID, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := inspected{ins: ins, security: info.Info.SecurityOptions}

	doc, err := os.ReadFile("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, ctl := range cisSection5 {
		row := fmt.Sprintf("| %s | %s | %s |", ctl.id, ctl.title, ctl.status)
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/SECURITY.md lacks the row starting %q", row)
		}
		if ctl.check == nil {
			continue
		}
		err := ctl.check(c)
		switch {
		case ctl.status == "met" && err != nil:
			t.Errorf("CIS %s (%s) is documented as met, and fails: %v", ctl.id, ctl.title, err)
		case ctl.status == "not met" && err == nil:
			t.Errorf("CIS %s (%s) now holds: mark it met in docs/SECURITY.md and here", ctl.id, ctl.title)
		}
	}
	// 5.1: AppArmor is not applicable only where the kernel has none.
	if _, err := os.Stat("/sys/module/apparmor"); err == nil {
		if p := ins.Container.AppArmorProfile; p == "" || p == "unconfined" {
			t.Errorf("CIS 5.1: this host has AppArmor and the server runs %q", p)
		}
	} else if slices.ContainsFunc(info.Info.SecurityOptions, func(s string) bool { return strings.Contains(s, "apparmor") }) {
		t.Errorf("CIS 5.1: the engine reports AppArmor, yet /sys/module/apparmor is absent")
	}
	// 5.6: no sshd among the server's processes.
	top, err := cli.ContainerTop(ctx, s.ContainerID, client.ContainerTopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range top.Processes {
		if strings.Contains(strings.Join(p, " "), "sshd") {
			t.Errorf("CIS 5.6: sshd runs in the server: %v", p)
		}
	}
}
