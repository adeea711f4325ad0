package spawnd

import (
	"slices"
	"strings"
	"testing"
)

func TestEgressConfig(t *testing.T) {
	off := false
	cases := []struct {
		name string
		cfg  EgressConfig
		want []string // blocked prefixes
		err  string
	}{
		{"default: the metadata services", EgressConfig{}, []string{"169.254.0.0/16", "100.100.100.200/32", "fd00:ec2::254/128"}, ""},
		{"more, and a bare address", EgressConfig{AllowMetadata: true, Block: []string{"10.1.2.3/8", "192.0.2.7", "2001:db8::1"}},
			[]string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::1/128"}, ""},
		{"off blocks nothing", EgressConfig{Enabled: &off, Block: []string{"nonsense"}}, nil, ""},
		{"not a CIDR", EgressConfig{Block: []string{"10.0.0.0/8", "intranet"}}, nil, "network.egress.block[1]"},
		{"port 0", EgressConfig{HostPorts: []int{0}}, nil, "network.egress.host_ports[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range tc.cfg.Blocked() {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("blocked %v, want %v", got, tc.want)
			}
		})
	}
}
