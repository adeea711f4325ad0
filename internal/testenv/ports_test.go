package testenv

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestFreePortOutsideEphemeralRange(t *testing.T) {
	lo := ephemeralLow()
	for range 20 {
		p := FreePort(t)
		if p < portsLow || p >= portsHigh || (lo > 0 && p >= lo) {
			t.Fatalf("FreePort() = %d; want in [%d, %d) and below the ephemeral range (%d)", p, portsLow, portsHigh, lo)
		}
		l, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("FreePort() = %d, which cannot be bound: %v", p, err)
		}
		if portFree(p) {
			t.Errorf("portFree(%d) with a listener on it = true", p)
		}
		l.Close()
	}
}

// TestPortsAreReservedAcrossProcesses: a port handed out is reserved for
// the process that got it; another live process is refused it, a dead
// one's reservation is taken over.
func TestPortsAreReservedAcrossProcesses(t *testing.T) {
	p := FreePort(t)
	if reserve(p) {
		t.Fatalf("port %d was handed out twice to this process", p)
	}
	// A reservation of another live process (PID 1 never dies).
	q := FreePort(t)
	path := filepath.Join(portsDir, strconv.Itoa(q))
	if err := os.WriteFile(path, []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if reserve(q) {
		t.Fatalf("port %d, reserved by a live process, was handed out", q)
	}
	// A dead process's reservation: taken over.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !reserve(q) {
		t.Fatalf("port %d, reserved by a process that is gone, was not taken over", q)
	}
}
