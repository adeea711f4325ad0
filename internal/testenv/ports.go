package testenv

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A port a test chooses now and a process binds later must come from outside
// the kernel's ephemeral range: inside it, any outgoing connection on the
// machine may be given that port as its local port in between, and the later
// bind fails with "address already in use" (CI run 21: Caddy's HTTPS port in
// TestComposeStack, chosen with a listen on port 0, was taken by a client
// socket before Caddy started). Ports are drawn from below the range and
// below spawnd's default Swarm port range (30000-32767).
const (
	portsLow  = 20000
	portsHigh = 30000 // exclusive
)

// FreePort returns a TCP port that nothing listens on or is bound to, on any
// address, for a process the test starts later.
func FreePort(t interface {
	Helper()
	Fatal(args ...any)
}) int {
	t.Helper()
	p, err := PickPort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// PickPort is FreePort for code without a testing.TB (the benchmarks).
func PickPort() (int, error) {
	high := portsHigh
	if lo := ephemeralLow(); lo > portsLow && lo < high {
		high = lo
	}
	for range 200 {
		p := portsLow + rand.IntN(high-portsLow)
		if portFree(p) && reserve(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free TCP port in %d-%d after 200 tries", portsLow, high-1)
}

// portFree binds the port on all addresses, which fails if any socket (a
// listener or a connection) holds it on any address.
func portFree(p int) bool {
	l, err := net.Listen("tcp4", ":"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ephemeralLow is the low end of net.ipv4.ip_local_port_range, or 0.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// portsDir holds one file per port a test process has handed out, with that
// process's PID. A port free now is bound later by a process the test
// starts; without the reservation, the same test drawing its next port, or
// a test in the other stream of scripts/test, could draw the same port in
// between (CI-style run of stop 34: the swarm class test's proxy found its
// port taken, EADDRINUSE). A
// reservation lasts as long as the process that made it: a file whose PID
// is gone is stale and taken over.
var portsDir = filepath.Join(os.TempDir(), "spawnd-test-ports")

// reserve claims port p for this process across every test process on the
// machine; false when another live process (or this one, earlier) has it.
func reserve(p int) bool {
	if err := os.MkdirAll(portsDir, 0o700); err != nil {
		return true // no reservations possible: fall back to the bind check alone
	}
	path := filepath.Join(portsDir, strconv.Itoa(p))
	for range 2 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err == nil {
			_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
			_ = f.Close()
			return true
		}
		if !errors.Is(err, os.ErrExist) {
			return true
		}
		b, _ := os.ReadFile(path)
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if perr == nil && pid > 0 && (pid == os.Getpid() || syscall.Kill(pid, 0) == nil) {
			return false // held by a live process (this one included)
		}
		_ = os.Remove(path) // stale (its process is gone, or half-written): take it over
	}
	return false
}
