package spawnd

import "testing"

func TestParseGPUs(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: the request's String, or "error"
	}{
		{"", ""}, {"all", "all"}, {"2", "2"}, {"device=0", "0"}, {"0,1", "0,1"}, {" device=1, 3 ", "1,3"},
		{"GPU-3a4b5c6d-0000-1111-2222-333344445555", "GPU-3a4b5c6d-0000-1111-2222-333344445555"},
		{"0", "error"}, {"-1", "error"}, {"two", "error"}, {"0,;rm", "error"}, {"device=", "error"},
	} {
		g, err := parseGPUs(tc.in)
		got := ""
		switch {
		case err != nil:
			got = "error"
		case g != nil:
			got = g.String()
		}
		if got != tc.want {
			t.Errorf("parseGPUs(%q) = %q (%v); want %q", tc.in, got, err, tc.want)
		}
	}
}
