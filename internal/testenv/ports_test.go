package testenv

import (
	"net"
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
